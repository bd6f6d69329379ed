"""The training job: data, synthetic tasks, tiny end-to-end runs of every task."""

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from hydra_ssm.cli import main  # noqa: E402
from hydra_ssm.train import data as D  # noqa: E402
from hydra_ssm.train.synthetic import LISTOPS_WORDS, listops_examples, mqar_examples  # noqa: E402

TINY = ["--hidden-size", "32", "--num-layers", "1", "--d-state", "8", "--headdim", "16", "--num-heads", "2",
        "--threads", "1", "--progress", "false", "--plot", "false", "--eval-batches", "2"]


def read_jsonl(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


# ------------------------------------------------------------------------------------------ data units
def test_batch_indices_are_epochwise_permutations_and_pure():
    n, bs = 10, 4
    seq = sum((D.batch_indices(n, bs, seed=3, step=s) for s in range(5)), [])
    assert sorted(seq[:10]) == list(range(10)) and sorted(seq[10:20]) == list(range(10))
    assert seq[:10] != seq[10:20]  # a new shuffle each epoch
    assert D.batch_indices(n, bs, 3, 4) == seq[16:20]  # a function of (seed, step) only
    assert D.batch_indices(n, bs, 4, 0) != seq[:4]


def test_mask_tokens_rate_and_specials():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(len(D.SPECIALS), 1000, (64, 128))
    ids[:, 0], ids[:, -1] = D.CLS, D.SEP
    out, labels = D.mask_tokens(ids, 0.15, 1000, gen)
    target = labels != -100
    assert abs(target.float().mean().item() - 0.15 * 126 / 128) < 0.01
    assert not target[:, 0].any() and not target[:, -1].any()
    assert torch.equal(labels[target], ids[target])
    frac_mask = (out[target] == D.MASK).float().mean().item()
    assert 0.75 < frac_mask < 0.85
    assert torch.equal(out[~target], ids[~target])


def test_default_corpus_split_is_deterministic_and_disjoint():
    tr1, va1 = D.default_corpus(400_000)
    tr2, va2 = D.default_corpus(400_000)
    assert tr1 == tr2 and va1 == va2
    assert tr1 and va1 and not set(tr1) & set(va1)
    assert 380_000 <= sum(map(len, tr1 + va1)) <= 400_000


def test_mqar_labels_are_the_bound_values_and_queries_can_precede_pairs():
    k, v = 16, 16
    x, y = mqar_examples(50, pairs=6, queries=3, num_keys=k, num_values=v, seed=0)
    k0, v0 = len(D.SPECIALS), len(D.SPECIALS) + k
    before = 0
    for ids, lab in zip(x.tolist(), y.tolist()):
        pairs = {ids[p]: (ids[p + 1], p) for p in range(1, len(ids) - 1, 2) if ids[p + 1] != D.MASK}
        queries = [p for p in range(1, len(ids) - 1, 2) if ids[p + 1] == D.MASK]
        assert len(pairs) == 6 and len(queries) == 3
        assert all(k0 <= key < v0 for key in pairs)
        for q in queries:
            value, p = pairs[ids[q]]
            assert lab[q + 1] == value
            before += q < p
        assert sum(t != -100 for t in lab) == 3
    assert before > 10  # non-causal: many queries come before the pair they ask for


def _eval_listops(tokens):
    def parse(i):
        t = tokens[i]
        if t.isdigit():
            return int(t), i + 1
        args, i = [], i + 1
        while tokens[i] != "]":
            a, i = parse(i)
            args.append(a)
        f = {"[MAX": max, "[MIN": min, "[MED": lambda a: int(np.sort(a)[(len(a) - 1) // 2]),
             "[SM": lambda a: sum(a) % 10}[t]
        return f(args), i + 1
    value, end = parse(0)
    assert end == len(tokens)
    return value


def test_listops_values_and_lengths():
    seqs, labels = listops_examples(40, 50, 2000, max_depth=8, max_args=6, seed=1)
    words = {i + len(D.SPECIALS): w for i, w in enumerate(LISTOPS_WORDS)}
    lengths = []
    for s, y in zip(seqs, labels.tolist()):
        toks = [words[i] for i in s.tolist()[1:-1]]
        lengths.append(len(toks))
        assert 50 <= len(toks) <= 2000
        assert _eval_listops(toks) == y
    assert max(lengths) > 1000  # long expressions: up to a few thousand tokens
    assert len(set(labels.tolist())) > 3


# ------------------------------------------------------------------------------------------ end-to-end runs
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    text = "\n".join(sum(D.default_corpus(60_000), []))
    (d / "train.txt").write_text(text[:-12_000])
    (d / "val.txt").write_text(text[-12_000:])
    return d


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("mlm")
    rc = main(["train", "--train-file", str(corpus / "train.txt"), "--validation-file", str(corpus / "val.txt"),
               "--vocab-size", "400", "--seq-len", "32", "--batch-size", "8", "--steps", "30", "--eval-every", "15",
               "--lr", "3e-3", "--warmup-steps", "3", "--mixers", "hydra,mha", "--output-dir", str(out),
               *TINY, "--plot", "true"])
    assert rc == 0
    return out


def test_mlm_compare_outputs(mlm_run, capsys):
    res = json.loads((mlm_run / "results.json").read_text())["results"]
    assert [r["mixer"] for r in res] == ["hydra", "mha"]
    h, a = res
    assert abs(h["params"] - a["params"]) / h["params"] < 0.01  # matched parameter count
    assert a["intermediate_size"] > 0 and h["intermediate_size"] == 0
    for r in res:
        assert r["steps"] == 30 and r["tokens_per_s"] > 0 and r["wall_s"] > 0
        train = [m for m in read_jsonl(os.path.join(r["run_dir"], "metrics.jsonl")) if "loss" in m]
        assert [m["step"] for m in train] == list(range(1, 31))
        assert np.mean([m["loss"] for m in train[-5:]]) < np.mean([m["loss"] for m in train[:5]]) - 0.3  # it learns
    md = (mlm_run / "results.md").read_text()
    assert "| mlm  | hydra |" in md and "val acc" in md
    assert (mlm_run / "curves.png").stat().st_size > 10_000
    run = mlm_run / "mlm" / "hydra"
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "tokenizer.json").is_file()
    ck = run / "checkpoints" / (run / "checkpoints" / "latest").read_text()
    assert (ck / "model.safetensors").is_file()
    torch.load(ck / "optimizer.pt", weights_only=True)
    torch.load(ck / "rng-rank0.pt", weights_only=True)
    # the saved model works with transformers' Auto classes and the fill-mask pipeline
    import hydra_ssm.models  # noqa: F401
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline
    model = AutoModelForMaskedLM.from_pretrained(run / "model")
    tok = AutoTokenizer.from_pretrained(run / "model")
    preds = pipeline("fill-mask", model=model, tokenizer=tok)("def f(x): [MASK] x", top_k=2)
    assert len(preds) == 2


def test_evaluate_command_reproduces_final_eval(mlm_run, capsys):
    capsys.readouterr()
    run = mlm_run / "mlm" / "hydra"
    assert main(["evaluate", "--model", str(run / "model"), "--threads", "1"]) == 0
    got = json.loads(capsys.readouterr().out)
    res = json.loads((run / "result.json").read_text())
    assert got["mixer"] == "hydra"
    assert got["eval_accuracy"] == pytest.approx(res["val_accuracy"], abs=1e-9)
    assert got["eval_loss"] == pytest.approx(res["val_loss"], rel=1e-5)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "txt"])
def test_classify_formats_and_init_from_mlm(mlm_run, tmp_path, fmt):
    rng = np.random.default_rng(0)
    words_a, words_b = ["alpha", "beta", "gamma"], ["delta", "omega", "sigma"]
    rows = []
    for i in range(64):
        lab = i % 2
        ws = rng.choice(words_a if lab else words_b, size=6).tolist()
        rows.append({"text": " ".join(ws), "label": ["neg", "pos"][lab]})
    path = tmp_path / f"train.{fmt}"
    if fmt == "csv":
        import csv
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["text", "label"])
            w.writeheader()
            w.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("\n".join(f"{r['label']}\t{r['text']}" for r in rows))
    out = tmp_path / "out"
    extra = ["--init-from", str(mlm_run / "mlm" / "hydra" / "model")] if fmt == "csv" else ["--vocab-size", "300"]
    assert main(["train", "--task", "classify", "--train-file", str(path), "--mixers", "hydra", "--steps", "25",
                 "--batch-size", "8", "--lr", "5e-3", "--warmup-steps", "2", "--eval-every", "25", "--pooling", "mean",
                 "--validation-fraction", "0.25", "--output-dir", str(out), *TINY, *extra]) == 0
    res = json.loads((out / "results.json").read_text())["results"][0]
    assert res["val_accuracy"] >= 0.99 and res["val_loss"] < 0.3  # the two classes use disjoint words
    if fmt == "csv":  # the pretrained encoder was loaded: embeddings equal the MLM model's at load time
        from hydra_ssm.models import HydraForSequenceClassification
        m = HydraForSequenceClassification.from_pretrained(mlm_run / "mlm" / "hydra" / "model", num_labels=2)
        assert m.config.vocab_size == 400


def test_image_digits_and_synthetic_compare(tmp_path):
    out = tmp_path / "out"
    assert main(["compare", "--tasks", "image,synthetic", "--synthetic-task", "listops", "--listops-max-len", "64",
                 "--synthetic-train-size", "64", "--synthetic-val-size", "16", "--mixers", "hydra,mha",
                 "--patch-size", "4", "--steps", "4", "--batch-size", "8", "--eval-every", "4",
                 "--output-dir", str(out), *TINY]) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    assert [(r["task"], r["mixer"]) for r in res] == [("image", "hydra"), ("image", "mha"),
                                                      ("synthetic-listops", "hydra"), ("synthetic-listops", "mha")]
    assert res[0]["seq_len"] == 5  # 2x2 patches of the 8x8 digits + the class token
    for r in res:
        assert 0 <= r["val_accuracy"] <= 1 and np.isfinite(r["val_loss"])


def test_mqar_learns_with_hydra(tmp_path):
    """The non-causal recall task is learnable: Hydra goes well above chance (1/8) in 200 steps."""
    out = tmp_path / "out"
    assert main(["train", "--task", "synthetic", "--synthetic-task", "mqar", "--mqar-pairs", "4", "--mqar-queries",
                 "2", "--mqar-keys", "8", "--mqar-values", "8", "--synthetic-train-size", "4000", "--mixers", "hydra",
                 "--steps", "200", "--batch-size", "32", "--lr", "3e-3", "--eval-every", "200", "--eval-batches", "4",
                 "--output-dir", str(out), "--hidden-size", "64", "--num-layers", "2", "--d-state", "16", "--headdim", "16",
                 "--threads", "1", "--progress", "false", "--plot", "false"]) == 0
    res = json.loads((out / "results.json").read_text())["results"][0]
    assert res["val_accuracy"] > 0.25, res  # chance is 1/8


def test_bf16_autocast_run(tmp_path):
    out = tmp_path / "out"
    assert main(["train", "--task", "image", "--mixers", "hydra", "--patch-size", "4", "--steps", "3",
                 "--batch-size", "8", "--eval-every", "3", "--bf16", "--output-dir", str(out), *TINY]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["bf16"] is True and np.isfinite(res["results"][0]["val_loss"])
