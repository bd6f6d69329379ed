"""Journey: masked-LM pretraining on one text file with the CLI, then transformers' fill-mask pipeline.

One document and no --validation-file: the last sequences of the text are held out. The saved model and
tokenizer are then loaded in a fresh interpreter by ``pipeline("fill-mask", model=DIR)``.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from hydra_ssm.cli import main  # noqa: E402
from tiny_runs import tiny_mlm_run  # noqa: E402
from hydra_ssm.train.config import TrainConfig  # noqa: E402
from hydra_ssm.train.tasks import mlm_data  # noqa: E402
from hydra_ssm.train.tokenization import CLS, MASK, SEP, load_tokenizer  # noqa: E402

from paths import SRC  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlm")
    out = tiny_mlm_run(d, 20_000, "--mixers", "hydra", "--steps", "4", "--eval-every", "4", "--eval-batches", "0")
    return d, out


def test_one_document_holds_out_its_last_sequences(run, capsys):
    d, out = run
    result = json.loads((out / "mlm" / "hydra" / "result.json").read_text())
    assert 0 <= result["val_accuracy"] <= 1
    cfg = TrainConfig(train_file=str(d / "book.txt"), seq_len=32, validation_fraction=0.05)
    task = mlm_data(cfg, load_tokenizer(str(out / "mlm" / "tokenizer")))
    n = task.num_train() + task.num_val()
    assert task.num_val() == round(0.05 * n) and task.info["validation"].startswith("the last")
    assert (task.val["input_ids"][:, 0] == CLS).all() and (task.val["input_ids"][:, -1] == SEP).all()
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "mlm" / "hydra" / "model"), "--threads", "1",
                 "--eval-batches", "0"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["eval_accuracy"] == pytest.approx(result["val_accuracy"], abs=1e-12)


def test_fill_mask_pipeline_in_a_fresh_process(run):
    _, out = run
    model_dir = str(out / "mlm" / "hydra" / "model")
    code = f"""
import json
import hydra_ssm
from transformers import AutoTokenizer, pipeline
tok = AutoTokenizer.from_pretrained({model_dir!r})
fill = pipeline("fill-mask", model={model_dir!r})
preds = fill("def f(x): [MASK] x", top_k=3)
print(json.dumps({{"tokens": [p["token_str"] for p in preds], "ids": [p["token"] for p in preds],
                  "sequences": [p["sequence"] for p in preds], "vocab": sorted(tok.get_vocab()),
                  "encoded": tok("def f(x): [MASK] x")["input_ids"], "max_length": tok.model_max_length}}))
"""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(got["tokens"]) == 3 and len(set(got["ids"])) == 3
    vocab = set(got["vocab"])
    assert all(t.replace(" ", "") in vocab or ("##" + t.strip()) in vocab for t in got["tokens"]), got["tokens"]
    assert all(i < len(vocab) for i in got["ids"])
    # the pipeline's input has the shape of a training sequence: [CLS] ... [MASK] ... [SEP]
    assert got["encoded"][0] == CLS and got["encoded"][-1] == SEP and MASK in got["encoded"]
    assert got["max_length"] == 32
