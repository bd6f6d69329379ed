"""Journey: ``hydra-ssm train --packing`` on a classification file of texts of varying lengths.

The packed run trains on the same examples as the padded one, packed into one row per step: its losses
equal the padded run's up to float32 rounding, its checkpoints resume exactly, and ``hydra-ssm evaluate``
in a fresh interpreter reads its model and scores it as the padded run's is scored, with or without packing.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from hydra_ssm.cli import main  # noqa: E402
from paths import SRC  # noqa: E402
from test_journey_classify import rows, write_csv  # noqa: E402
from tiny_runs import TINY_CLI  # noqa: E402


def train(d, out, *extra):
    assert main(["train", "--task", "classify", "--train-file", str(d / "train.csv"), "--validation-file",
                 str(d / "validation.csv"), "--mixers", "hydra", "--steps", "4", "--batch-size", "8", "--lr", "5e-3",
                 "--warmup-steps", "1", "--dropout", "0", "--eval-every", "4", "--eval-batches", "0",
                 "--checkpoint-every", "2", "--keep-checkpoints", "2", "--output-dir", str(out), *TINY_CLI,
                 *extra]) == 0
    return out / "classify" / "hydra"


def metrics(run_dir):
    """(training records, evaluation records) of metrics.jsonl, without the wall-clock times."""
    with open(run_dir / "metrics.jsonl") as fh:
        records = [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in fh]
    return [r for r in records if "loss" in r], [r for r in records if "eval_loss" in r]


def evaluate_fresh(model_dir, *extra):
    """``hydra-ssm evaluate`` in a fresh interpreter: its JSON."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "hydra_ssm.cli", "evaluate", "--model", str(model_dir),
                           "--threads", "1", *extra], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("packing")
    write_csv(d / "train.csv", rows(64, seed=0))  # 4 to 60 words: lengths vary, some past --seq-len 32
    write_csv(d / "validation.csv", rows(24, seed=1, noise=0.15))
    return d, train(d, d / "padded"), train(d, d / "packed", "--packing")


def test_packed_training_follows_the_padded_run(runs):
    _, padded, packed = runs
    (pad_steps, pad_eval), (pack_steps, pack_eval) = metrics(padded), metrics(packed)
    assert [r["tokens"] for r in pack_steps] == [r["tokens"] for r in pad_steps]  # the same tokens, no padding
    for a, b in zip(pack_steps, pad_steps, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5), (a, b)
    assert pack_eval[-1]["eval_targets"] == pad_eval[-1]["eval_targets"] == 24
    assert pack_eval[-1]["eval_loss"] == pytest.approx(pad_eval[-1]["eval_loss"], rel=1e-4)
    with open(packed / "train_config.json") as fh:
        assert json.load(fh)["packing"] is True


def test_packed_run_resumes_exactly(runs, tmp_path):
    """The run stopped after its step-2 checkpoint and resumed repeats steps 3 and 4 bit for bit."""
    d, _, packed = runs
    out = tmp_path / "again"
    shutil.copytree(packed.parent.parent, out)
    checkpoints = out / "classify" / "hydra" / "checkpoints"
    shutil.rmtree(checkpoints / "step-0000004")
    (checkpoints / "latest").write_text("step-0000002")
    resumed = train(d, out, "--packing", "--resume")
    assert metrics(resumed) == metrics(packed)
    before, after = (load_file(run / "model" / "model.safetensors") for run in (packed, resumed))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def evaluate_here(model_dir, capsys, *extra):
    """``hydra-ssm evaluate`` in this interpreter: its JSON."""
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_dir), "--threads", "1", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_reads_the_packed_model_in_a_fresh_process(runs, capsys):
    """The saved model is an ordinary one: evaluate scores it padded or packed alike, and as the padded
    run's model is scored."""
    _, padded, packed = runs
    as_packed = evaluate_fresh(packed / "model")  # the saved run's --packing
    as_padded = evaluate_here(packed / "model", capsys, "--packing", "false")
    other = evaluate_here(padded / "model", capsys)
    assert as_packed["eval_targets"] == as_padded["eval_targets"] == other["eval_targets"] == 24
    assert as_packed["eval_loss"] == pytest.approx(as_padded["eval_loss"], rel=1e-5)
    assert as_packed["eval_accuracy"] == as_padded["eval_accuracy"]
    assert as_packed["eval_loss"] == pytest.approx(other["eval_loss"], rel=1e-4)
    _, pack_eval = metrics(packed)
    assert as_packed["eval_loss"] == pytest.approx(pack_eval[-1]["eval_loss"], rel=1e-6)


def test_packing_images_is_refused_in_one_line(tmp_path, capsys):
    assert main(["train", "--task", "image", "--packing", "--output-dir", str(tmp_path / "run"), *TINY_CLI]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hydra-ssm: error: --packing") and "image" in err and "\n" not in err
    assert not (tmp_path / "run").exists()
