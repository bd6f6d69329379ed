"""A user trains on the parity task with a mixer option, evaluates the saved model in a fresh process and
reloads it with transformers' AutoModel; then runs the state-tracking study, interrupts nothing, and runs it
again: the second call trains nothing."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

import hydra_ssm.train.runner as runner  # noqa: E402
from hydra_ssm.bench.state_tracking import Variant  # noqa: E402
from hydra_ssm.cli import main  # noqa: E402
from tiny_runs import cli_env  # noqa: E402

TINY = ["--hidden-size", "16", "--num-layers", "1", "--d-state", "4", "--headdim", "8", "--num-heads", "2",
        "--threads", "1", "--progress", "false", "--plot", "false"]

FRESH = r"""
import contextlib, io, json, sys
import torch
import hydra_ssm.models  # registers the model classes with transformers
from hydra_ssm.cli import main
from transformers import AutoModelForMaskedLM, AutoTokenizer

model_dir = sys.argv[1]
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    assert main(["evaluate", "--model", model_dir, "--threads", "1"]) == 0
model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
tok = AutoTokenizer.from_pretrained(model_dir)
enc = tok(["1 0 1 1 0 0 1 0"], return_tensors="pt")
with torch.no_grad():
    logits = model(**enc).logits
option = sys.argv[2]
values = {getattr(m, option) for m in model.modules() if hasattr(m, option)}
print(json.dumps({"evaluate": json.loads(buf.getvalue()), "mixer_options": model.config.mixer_options,
                  "values": sorted(values), "ids": enc["input_ids"][0].tolist(), "shape": list(logits.shape)}))
"""


@pytest.mark.parametrize("mixer,option,value", [("hydra", "scan_impl", "two_pass"),
                                                 ("bi_deltanet", "allow_neg_eigval", True)])
def test_parity_run_evaluates_the_same_in_a_fresh_process_and_reloads_its_mixer_options(tmp_path, mixer, option, value):
    out = tmp_path / "run"
    assert main(["train", "--task", "synthetic", "--synthetic-task", "parity", "--state-len", "8",
                 "--synthetic-train-size", "64", "--synthetic-val-size", "24", "--mixers", mixer, "--mixer-option",
                 f"{option}={value}", "--steps", "4", "--batch-size", "8", "--eval-batches", "0", "--eval-every",
                 "4", "--output-dir", str(out), *TINY]) == 0
    result = json.loads((out / "results.json").read_text())["results"][0]
    model_dir = out / "synthetic-parity" / mixer / "model"
    r = subprocess.run([sys.executable, "-c", FRESH, str(model_dir), option], env=cli_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["evaluate"]["task"] == "synthetic-parity"
    assert got["evaluate"]["eval_targets"] == 24 * 8  # every bit of every validation sequence
    assert got["evaluate"]["eval_accuracy"] == result["val_accuracy"]
    assert abs(got["evaluate"]["eval_loss"] - result["val_loss"]) < 1e-6
    assert got["mixer_options"] == {option: value} and got["values"] == [value]
    assert got["ids"] == [2, 6, 5, 6, 6, 5, 5, 6, 5, 3]  # [CLS] bits [SEP]
    assert got["shape"] == [1, 10, 11]  # 5 specials, 2 bits and 4 answers


STUDY = ["--variants", "hydra", "hydra:scan_impl=two_pass", "--tasks", "parity", "s5", "--lengths", "8", "--seeds",
         "0", "--steps", "3", "--d-model", "16", "--n-layers", "1", "--batch-size", "4", "--train-size", "32",
         "--val-size", "8", "--train-option", "headdim=8", "--train-option", "d_state=4", "--threads", "1"]


def test_study_tabulates_every_cell_and_resumes_without_training_again(tmp_path, capsys, monkeypatch):
    out = tmp_path / "study"
    assert main(["bench-state-tracking", *STUDY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert [(c["variant"], c["task"]) for c in cells] == [("hydra", "parity"), ("hydra", "s5"),
                                                           ("hydra:scan_impl=two_pass", "parity"),
                                                           ("hydra:scan_impl=two_pass", "s5")]
    assert cells[2]["options"] == {"scan_impl": "two_pass"}
    run = out / "runs" / "hydra_scan_impl=two_pass" / "parity-L8-seed0" / "synthetic-parity" / "hydra"
    assert json.loads((run / "model" / "config.json").read_text())["mixer_options"] == {"scan_impl": "two_pass"}
    rows = [line for line in printed.splitlines() if line.startswith("| hydra")]
    assert len(rows) == 4 and all(row.rstrip(" |").endswith("/1") for row in rows)
    assert f"{cells[0]['val_accuracy']:.4f}" in rows[0]
    assert (out / "results.md").read_text().count("| hydra") == 4

    # a second call reads every cell back; one cell whose JSON is gone is trained again, alone
    (out / "cells" / "hydra" / "s5-L8-seed0.json").unlink()
    trained = []
    real_run = runner.run
    monkeypatch.setattr(runner, "run", lambda cfg: trained.append(cfg.synthetic_task) or real_run(cfg))
    assert main(["bench-state-tracking", *STUDY, "--out", str(out)]) == 0
    assert trained == ["s5"]
    assert "1 cells trained now, 3 read back" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["cells"][0] == cells[0]

    # the same directory with another budget is refused, naming what changed
    assert main(["bench-state-tracking", *STUDY, "--steps", "5", "--out", str(out)]) == 2
    assert trained == ["s5"] and "steps: 3 -> 5" in capsys.readouterr().err


def test_study_evaluates_the_trained_models_at_other_lengths(tmp_path, capsys):
    """--eval-lengths: at the trained length the study's own evaluation gives the training run's accuracy; at
    a longer one a mixer without position embeddings runs, one with learned positions is "n/a"."""
    out = tmp_path / "study"
    argv = ["--variants", "hydra", "mha", "--tasks", "parity", "--lengths", "8", "--eval-lengths", "8", "20",
            *STUDY[STUDY.index("--seeds"):]]
    assert main(["bench-state-tracking", *argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    hydra, mha = json.loads((out / "results.json").read_text())["cells"]
    assert hydra["longer"]["8"] == hydra["val_accuracy"] and mha["longer"]["8"] == mha["val_accuracy"]
    assert 0 <= hydra["longer"]["20"] <= 1 and mha["longer"]["20"] is None
    assert "at L=20" in printed and "n/a" in [line for line in printed.splitlines() if line.startswith("| mha")][0]
    # read back: nothing is evaluated again
    saved = (out / "cells" / "hydra" / "parity-L8-seed0.json").read_text()
    assert main(["bench-state-tracking", *argv, "--out", str(out)]) == 0
    assert (out / "cells" / "hydra" / "parity-L8-seed0.json").read_text() == saved


def test_variant_options_are_literals_and_may_hold_commas():
    v = Variant("hydra:scan_impl=two_pass, dt_limit=(0.0, 2.5),learnable_init_states=True")
    assert v.mixer == "hydra"
    assert v.options == {"scan_impl": "two_pass", "dt_limit": [0.0, 2.5], "learnable_init_states": True}
    assert v.slug == "hydra_scan_impl=two_pass_dt_limit=_0.0_2.5__learnable_init_states=True"


@pytest.mark.parametrize("argv, message", [
    (["--variants", "nosuch"], "cell nosuch parity L=16 seed=0: unknown mixer 'nosuch'"),
    (["--warmup-steps", "-1"], "--warmup-steps must be >= 0, got -1"),
    (["--variants", "hydra:bogus=1"], "--mixer-option bogus: no mixer of --mixers (hydra) accepts it"),
    (["--variants", "hydra:scan_impl=sideways"], "sideways"),
    (["--variants", "hydra:"], "no options after ':'"),
    (["--variants", "hydra", "hydra"], "--variants lists a value twice"),
    (["--lengths", "0"], "--lengths must be >= 1"),
    (["--train-option", "steps=3"], "the study sets steps itself"),
])
def test_study_bad_options_stop_before_training(tmp_path, capsys, argv, message):
    out = tmp_path / "study"
    assert main(["bench-state-tracking", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hydra-ssm: error:") and message in err[0], err
    assert not out.exists()
