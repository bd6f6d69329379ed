"""The training job: data, synthetic tasks, tiny end-to-end runs of every task."""

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from hydra_ssm.cli import main  # noqa: E402
from hydra_ssm.train.batching import batch_indices, mask_tokens  # noqa: E402
from hydra_ssm.train.corpus import default_corpus  # noqa: E402
from hydra_ssm.train.tokenization import CLS, MASK, SEP, SPECIALS  # noqa: E402
from hydra_ssm.train.synthetic import LISTOPS_WORDS, listops_examples, mqar_examples  # noqa: E402
from tiny_runs import write_split_book  # noqa: E402

TINY = ["--hidden-size", "32", "--num-layers", "1", "--d-state", "8", "--headdim", "16", "--num-heads", "2",
        "--threads", "1", "--progress", "false", "--plot", "false", "--eval-batches", "2"]


def read_jsonl(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


# ------------------------------------------------------------------------------------------ data units
def test_batch_indices_are_epochwise_permutations_and_pure():
    n, bs = 10, 4
    seq = sum((batch_indices(n, bs, seed=3, step=s) for s in range(5)), [])
    assert sorted(seq[:10]) == list(range(10)) and sorted(seq[10:20]) == list(range(10))
    assert seq[:10] != seq[10:20]  # a new shuffle each epoch
    assert batch_indices(n, bs, 3, 4) == seq[16:20]  # a function of (seed, step) only
    assert batch_indices(n, bs, 4, 0) != seq[:4]


def test_mask_tokens_rate_and_specials():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(len(SPECIALS), 1000, (64, 128))
    ids[:, 0], ids[:, -1] = CLS, SEP
    out, labels = mask_tokens(ids, 0.15, 1000, gen)
    target = labels != -100
    assert abs(target.float().mean().item() - 0.15 * 126 / 128) < 0.01
    assert not target[:, 0].any() and not target[:, -1].any()
    assert torch.equal(labels[target], ids[target])
    frac_mask = (out[target] == MASK).float().mean().item()
    assert 0.75 < frac_mask < 0.85
    assert torch.equal(out[~target], ids[~target])


def test_default_corpus_split_is_deterministic_and_disjoint():
    tr1, va1 = default_corpus(400_000)
    tr2, va2 = default_corpus(400_000)
    assert tr1 == tr2 and va1 == va2
    assert tr1 and va1 and not set(tr1) & set(va1)
    assert 380_000 <= sum(map(len, tr1 + va1)) <= 400_000


def test_mqar_labels_are_the_bound_values_and_queries_can_precede_pairs():
    k, v = 16, 16
    x, y = mqar_examples(50, pairs=6, queries=3, num_keys=k, num_values=v, seed=0)
    k0, v0 = len(SPECIALS), len(SPECIALS) + k
    before = 0
    for ids, lab in zip(x.tolist(), y.tolist()):
        pairs = {ids[p]: (ids[p + 1], p) for p in range(1, len(ids) - 1, 2) if ids[p + 1] != MASK}
        queries = [p for p in range(1, len(ids) - 1, 2) if ids[p + 1] == MASK]
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
    words = {i + len(SPECIALS): w for i, w in enumerate(LISTOPS_WORDS)}
    lengths = []
    for s, y in zip(seqs, labels.tolist()):
        toks = [words[i] for i in s.tolist()[1:-1]]
        lengths.append(len(toks))
        assert 50 <= len(toks) <= 2000
        assert _eval_listops(toks) == y
    assert max(lengths) > 1000  # long expressions: up to a few thousand tokens
    assert len(set(labels.tolist())) > 3


def test_seeded_split_is_datasets_train_test_split():
    """The classify split is exactly what ``train_test_split(shuffle=True, seed=SPLIT_SEED)`` held out before."""
    import datasets

    from hydra_ssm.train.tasks import SPLIT_SEED, seeded_split

    for n, fraction in ((2, 0.1), (3, 0.5), (10, 0.1), (17, 0.2), (100, 0.05), (9, 0.99)):
        n_val = min(n - 1, max(1, int(round(n * fraction))))
        parts = datasets.Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=n_val, shuffle=True,
                                                                                 seed=SPLIT_SEED)
        train, val = seeded_split(n, fraction)
        assert (train.tolist(), val.tolist()) == (parts["train"]["i"], parts["test"]["i"]), (n, fraction)


PINNED_DIGITS_VAL = [6, 9, 14, 19, 25]  # the first held-out digits (of 1797, 359 held out)


def test_image_split_is_pinned():
    """Images are held out by the same shuffle, each part kept in file order (values recorded before the split
    moved into tasks.py: a run resumed across versions sees the same validation images)."""
    from hydra_ssm.train.tasks import split_images

    y = np.arange(10)
    x_tr, y_tr, x_va, y_va = split_images(y[:, None] * 2, y, 0.2)
    assert y_va.tolist() == [4, 8] and y_tr.tolist() == [0, 1, 2, 3, 5, 6, 7, 9]
    assert x_va[:, 0].tolist() == [8, 16]
    _, _, _, y_va = split_images(np.zeros((1797, 1)), np.arange(1797), 0.2)
    assert len(y_va) == 359 and y_va[:5].tolist() == PINNED_DIGITS_VAL


@pytest.mark.parametrize("mixer", ["hydra", "mha", "quasiseparable", "toeplitz"])
def test_weight_decay_groups(mixer):
    """Matrices decay; vectors, embeddings and flagged parameters do not: for the built-in models the same
    grouping as the shape rule alone (dim >= 2, not an embedding)."""
    from hydra_ssm.train.config import build_config
    from hydra_ssm.train.loop import build_model, param_groups
    from hydra_ssm.train.tasks import TaskData

    cfg = build_config({}, {"hidden_size": 32, "num_layers": 1, "d_state": 8, "headdim": 16, "num_heads": 2,
                            "weight_decay": 0.1})
    model = build_model(cfg, TaskData("mlm", {}, {}, vocab_size=50, seq_len=16), mixer, 64)
    decay, rest = param_groups(model, 0.1)
    assert (decay["weight_decay"], rest["weight_decay"]) == (0.1, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    by_shape = {n for n, p in model.named_parameters() if p.dim() >= 2 and "embeddings" not in n}
    assert {names[id(p)] for p in decay["params"]} == by_shape
    assert {names[id(p)] for p in rest["params"]} == set(names.values()) - by_shape
    assert any(p.dim() == 1 for p in rest["params"]) and any("embeddings" in names[id(p)] for p in rest["params"])


def test_weight_decay_reads_the_flag():
    from hydra_ssm import Hydra
    from hydra_ssm.train.loop import param_groups

    layer = Hydra(d_model=16, d_state=4, headdim=8, learnable_init_states=True)
    decay, rest = param_groups(layer, 0.1)
    assert layer.init_states.dim() == 3
    assert any(p is layer.init_states for p in rest["params"]) and all(p is not layer.init_states
                                                                       for p in decay["params"])
    assert any(p is layer.in_proj.weight for p in decay["params"])


# ------------------------------------------------------------------------------------------ end-to-end runs
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_split_book(tmp_path_factory.mktemp("corpus"), 60_000, 12_000)


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
