"""Journey: train a text classifier with the CLI, then use it the way transformers users do.

The model directory is loaded in a fresh interpreter with only ``import hydra_ssm`` and transformers'
own ``AutoTokenizer`` and ``pipeline("text-classification")``; its accuracy over the validation rows must
equal ``hydra-ssm evaluate``'s (the same count of correct rows), and it must answer with the label names.
Some texts are longer than the training sequence length, so the truncation rule is exercised.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from hydra_ssm.cli import main  # noqa: E402
from tiny_runs import TINY_CLI  # noqa: E402

from paths import SRC  # noqa: E402
NAMES = ("cooking", "sports")
CUES = (["pan", "salt", "oven", "butter", "onion"], ["goal", "team", "match", "ball", "coach"])
FILLER = ["the", "a", "of", "and", "to", "in", "was", "it", "on", "for", "with", "then", "very", "some", "that"]


def rows(n: int, seed: int, noise: float = 0.0) -> list[dict]:
    """Texts of filler words with a few cue words of their class spread through them; every fifth text
    has about 60 words, longer than the 32 tokens the model is trained on. A fraction ``noise`` of the rows
    carries the other label, so that no model is right on every row."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = int(rng.integers(2))
        words = rng.choice(FILLER, size=60 if i % 5 == 0 else int(rng.integers(4, 20))).tolist()
        for k in range(max(2, len(words) // 8)):
            words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(CUES[label])))
        out.append({"text": " ".join(words), "label": NAMES[1 - label if rng.random() < noise else label]})
    return out


def write_csv(path, data):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["text", "label"])
        w.writeheader()
        w.writerows(data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("classify")
    write_csv(d / "train.csv", rows(240, seed=0))
    write_csv(d / "validation.csv", rows(60, seed=1, noise=0.15))
    out = d / "run"
    assert main(["train", "--task", "classify", "--train-file", str(d / "train.csv"), "--validation-file",
                 str(d / "validation.csv"), "--mixers", "hydra,mha", "--steps", "60", "--batch-size", "16",
                 "--lr", "5e-3", "--warmup-steps", "5", "--pooling", "mean", "--eval-every", "60", "--eval-batches", "0",
                 "--output-dir", str(out), *TINY_CLI]) == 0
    return d, out


def fresh_pipeline(model_dir: str, texts: list[str]) -> dict:
    """Run the saved model in a new interpreter through AutoTokenizer and the text-classification pipeline."""
    code = f"""
import json, sys
import hydra_ssm
from transformers import AutoTokenizer, pipeline
texts = json.loads(sys.stdin.read())
tok = AutoTokenizer.from_pretrained({model_dir!r})
pipe = pipeline("text-classification", model={model_dir!r})
preds = pipe(texts, truncation=True)
print(json.dumps({{"labels": [p["label"] for p in preds], "max_length": tok.model_max_length,
                  "ids": tok(texts, truncation=True)["input_ids"], "id2label": pipe.model.config.id2label}}))
"""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mixer", ["hydra", "mha"])
def test_pipeline_in_a_fresh_process_equals_evaluate(trained, mixer, capsys):
    d, out = trained
    model_dir = str(out / "classify" / mixer / "model")
    capsys.readouterr()
    assert main(["evaluate", "--model", model_dir, "--eval-batches", "0", "--threads", "1"]) == 0
    ev = json.loads(capsys.readouterr().out)
    with open(d / "validation.csv", newline="") as fh:
        val = list(csv.DictReader(fh))
    assert ev["eval_targets"] == len(val) == 60

    got = fresh_pipeline(model_dir, [r["text"] for r in val])
    assert got["max_length"] == 32 and max(len(ids) for ids in got["ids"]) == 32  # long texts were cut ...
    assert all(ids[0] == 2 and ids[-1] == 3 for ids in got["ids"])  # ... and keep [CLS] ... [SEP]
    assert got["id2label"] == {"0": "cooking", "1": "sports"}
    assert set(got["labels"]) <= set(NAMES)  # names, not LABEL_0
    correct = sum(p == r["label"] for p, r in zip(got["labels"], val))
    assert correct == round(ev["eval_accuracy"] * ev["eval_targets"])  # the same count of rows right
    assert 40 <= correct < 60, (correct, ev)  # learnt from the cue words (chance: 30), not perfect (noisy labels)

    # row for row: the pipeline predicts what the model predicts on the ids training and evaluate use
    import torch

    from hydra_ssm.models import HydraForSequenceClassification
    from hydra_ssm.train.tasks import classify_data
    from hydra_ssm.train.tokenization import load_tokenizer
    from hydra_ssm.train.config import TrainConfig

    cfg = TrainConfig(task="classify", train_file=str(d / "train.csv"), validation_file=str(d / "validation.csv"),
                      seq_len=32)
    task = classify_data(cfg, load_tokenizer(model_dir))
    model = HydraForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        ours = [model(input_ids=ids[None]).logits.argmax(-1).item() for ids in task.val["input_ids"]]
    assert got["labels"] == [NAMES[i] for i in ours]


def test_training_encodes_as_the_saved_tokenizer(trained):
    """The ids the model was trained and evaluated on are AutoTokenizer's with truncation=True."""
    from transformers import AutoTokenizer

    from hydra_ssm.train.tasks import classify_data
    from hydra_ssm.train.tokenization import CLS, SEP, load_tokenizer
    from hydra_ssm.train.config import TrainConfig

    d, out = trained
    model_dir = out / "classify" / "hydra" / "model"
    cfg = TrainConfig(task="classify", train_file=str(d / "train.csv"), validation_file=str(d / "validation.csv"),
                      seq_len=32)
    task = classify_data(cfg, load_tokenizer(str(model_dir)))
    tok = AutoTokenizer.from_pretrained(model_dir)
    with open(d / "validation.csv", newline="") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)]
    assert [t.tolist() for t in task.val["input_ids"]] == tok(texts, truncation=True)["input_ids"]
    pair = tok("salt pan", "goal team")["input_ids"]
    assert pair[0] == CLS and pair.count(SEP) == 2 and pair[-1] == SEP
