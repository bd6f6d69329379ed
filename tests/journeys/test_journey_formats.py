"""Journey: every documented data format through the real command line, with and without a validation file.

Each format (csv, tsv, json, jsonl, parquet, and label<TAB>text .txt) trains a classifier twice: once with
text labels and a --validation-file, once with integer labels and the held-out split. ``hydra-ssm
evaluate`` then scores the saved model on exactly the validation rows, and the model's config names the
classes.
"""

import csv
import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from hydra_ssm.cli import main  # noqa: E402
from tiny_runs import TINY_CLI  # noqa: E402

TINY = [*TINY_CLI, "--mixers", "hydra", "--steps", "2", "--batch-size", "8", "--eval-every", "2",
        "--eval-batches", "0"]
NAMES = ["bird", "fish", "tree"]
WORDS = ["wing", "feather", "nest", "fin", "scale", "reef", "leaf", "bark", "root"]


def examples(n: int, seed: int, names: bool) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = int(rng.integers(3))
        text = " ".join(rng.choice(WORDS[3 * y: 3 * y + 3], size=int(rng.integers(3, 12))).tolist())
        out.append({"text": text, "label": NAMES[y] if names else y})
    return out


def write(path, rows):
    fmt = path.suffix[1:]
    if fmt in ("csv", "tsv"):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["text", "label"], delimiter="," if fmt == "csv" else "\t")
            w.writeheader()
            w.writerows(rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(f"{r['label']}\t{r['text']}\n" for r in rows))


def evaluate(capsys, model_dir, *extra):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_dir), "--threads", "1", "--eval-batches", "0", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet", "txt"])
def test_format_with_validation_file_and_text_labels(tmp_path, fmt, capsys):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    write(tmp_path / f"train.{fmt}", examples(40, 0, names=True))
    write(tmp_path / f"validation.{fmt}", examples(13, 1, names=True))
    out = tmp_path / "run"
    assert main(["train", "--task", "classify", "--train-file", str(tmp_path / f"train.{fmt}"),
                 "--validation-file", str(tmp_path / f"validation.{fmt}"), "--output-dir", str(out), *TINY]) == 0
    model = out / "classify" / "hydra" / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["id2label"] == {"0": "bird", "1": "fish", "2": "tree"}
    assert config["label2id"] == {"bird": 0, "fish": 1, "tree": 2}
    ev = evaluate(capsys, model)
    assert ev["eval_targets"] == 13
    assert ev["eval_accuracy"] == pytest.approx(json.loads((out / "classify" / "hydra" / "result.json")
                                                           .read_text())["val_accuracy"], abs=1e-12)
    # evaluate on another file of the same format, without the training file (the model knows its labels)
    write(tmp_path / f"other.{fmt}", examples(7, 2, names=True))
    (tmp_path / f"train.{fmt}").unlink()
    assert evaluate(capsys, model, "--validation-file", str(tmp_path / f"other.{fmt}"))["eval_targets"] == 7


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet", "txt"])
def test_format_held_out_split_and_integer_labels(tmp_path, fmt, capsys):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    write(tmp_path / f"train.{fmt}", examples(40, 0, names=False))
    out = tmp_path / "run"
    assert main(["train", "--task", "classify", "--train-file", str(tmp_path / f"train.{fmt}"),
                 "--validation-fraction", "0.25", "--output-dir", str(out), *TINY]) == 0
    model = out / "classify" / "hydra" / "model"
    assert json.loads((model / "config.json").read_text())["id2label"] == {"0": "0", "1": "1", "2": "2"}
    assert evaluate(capsys, model)["eval_targets"] == 10  # 25% of 40 rows, the same rows again


def test_held_out_split_is_seeded_and_disjoint(tmp_path):
    from hydra_ssm.train.tasks import classify_data
    from hydra_ssm.train.config import TrainConfig

    rows = [{"text": f"row {i} " + r["text"], "label": r["label"]} for i, r in enumerate(examples(50, 3, True))]
    write(tmp_path / "train.jsonl", rows)
    cfg = TrainConfig(task="classify", train_file=str(tmp_path / "train.jsonl"), validation_fraction=0.2,
                      vocab_size=300, seq_len=32, seed=1)
    a = classify_data(cfg)
    b = classify_data(cfg.replace(seed=7), a.tokenizer)  # the split does not depend on --seed
    assert [t.tolist() for t in a.val["input_ids"]] == [t.tolist() for t in b.val["input_ids"]]
    assert a.num_val() == 10 and a.num_train() == 40
    decode = a.tokenizer.batch_decode
    held = set(decode([t.tolist() for t in a.val["input_ids"]], skip_special_tokens=True))
    kept = set(decode([t.tolist() for t in a.train["input_ids"]], skip_special_tokens=True))
    assert len(held) == 10 and not held & kept


def test_bad_tables_are_one_line_errors(tmp_path, capsys):
    base = ["train", "--task", "classify", "--output-dir", str(tmp_path / "out"), *TINY]
    write(tmp_path / "train.csv", examples(20, 0, names=True))
    write(tmp_path / "ints.csv", examples(5, 1, names=False))
    write(tmp_path / "unseen.jsonl", [{"text": "wing", "label": "dragon"}])
    (tmp_path / "floats.jsonl").write_text('{"text": "a", "label": 0.5}\n{"text": "b", "label": 1.5}\n')
    for argv, words in (
        (["--train-file", str(tmp_path / "train.csv"), "--validation-file", str(tmp_path / "ints.csv")],
         "integers"),
        (["--train-file", str(tmp_path / "train.csv"), "--validation-file", str(tmp_path / "unseen.jsonl")],
         "'dragon'"),
        (["--train-file", str(tmp_path / "floats.jsonl")], "integers or strings"),
        (["--train-file", str(tmp_path / "train.csv"), "--num-labels", "2"], "--num-labels 2"),
    ):
        capsys.readouterr()
        assert main([*base, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("hydra-ssm: error:") and words in err[-1], err


def test_shipped_classify_config(tmp_path, monkeypatch, capsys):
    """configs/classify.yaml as shipped: CSV files in data/, fine-tuning the default masked-LM run."""
    import os

    config = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "configs", "classify.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "train.csv", examples(40, 0, names=True))
    write(tmp_path / "data" / "validation.csv", examples(12, 1, names=True))
    (tmp_path / "book.txt").write_text(" ".join(WORDS * 200))
    assert main(["train", "--train-file", "book.txt", "--output-dir", "runs/default", *TINY]) == 0
    assert main(["train", "--config", config, "--steps", "2", "--batch-size", "4", "--threads", "1",
                 "--progress", "false", "--plot", "false"]) == 0
    model = tmp_path / "runs" / "classify" / "classify" / "hydra" / "model"
    assert json.loads((model / "config.json").read_text())["id2label"] == {"0": "bird", "1": "fish", "2": "tree"}
    assert json.loads((model / "tokenizer_config.json").read_text())["model_max_length"] == 256
    assert evaluate(capsys, model, "--validation-file", "data/validation.csv")["eval_targets"] == 12


def test_sentence_pairs_encode_as_the_saved_tokenizer(tmp_path):
    """--text-pair-column: [CLS] a [SEP] b [SEP], cut to --seq-len with the longer text shortened first."""
    from transformers import AutoTokenizer

    from hydra_ssm.train.tasks import classify_data
    from hydra_ssm.train.tokenization import CLS, SEP, save_tokenizer
    from hydra_ssm.train.config import TrainConfig

    rows = [{"premise": " ".join([r["text"]] * (5 if i % 3 == 0 else 1)), "hypothesis": "wing fin leaf",
             "label": r["label"]} for i, r in enumerate(examples(12, 4, names=True))]
    write(tmp_path / "pairs.jsonl", rows)
    cfg = TrainConfig(task="classify", train_file=str(tmp_path / "pairs.jsonl"), text_column="premise",
                      text_pair_column="hypothesis", vocab_size=300, seq_len=32)
    task = classify_data(cfg)
    save_tokenizer(task.tokenizer, str(tmp_path / "tok"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    ids = [t.tolist() for t in task.train["input_ids"] + task.val["input_ids"]]
    assert max(map(len, ids)) == 32 and all(x[0] == CLS and x.count(SEP) == 2 and x[-1] == SEP for x in ids)
    texts = {tuple(tok(r["premise"], r["hypothesis"], truncation=True)["input_ids"]) for r in rows}
    assert set(map(tuple, ids)) <= texts
