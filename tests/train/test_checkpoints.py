"""Fault injection on checkpoints: every fault ends in a clear error or in a resume equal to the unbroken run.

The reference is one unbroken run of 6 steps with checkpoints at steps 2, 4 and 6 (dropout on, so the RNG
state matters). A fault is applied to a copy of it; resuming must then either stop with one clear line, or
train from the newest complete checkpoint and end with the reference's losses (1e-6) and final weights.
"""

import json
import os
import random
import shutil

import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from hydra_ssm.cli import main  # noqa: E402
from hydra_ssm.train import checkpoints as C  # noqa: E402
from hydra_ssm.train.config import TrainConfig, UsageError  # noqa: E402
from tiny_runs import tiny, write_corpus  # noqa: E402

STEPS = 6


def log(run):
    with open(run / "metrics.jsonl") as fh:
        recs = [json.loads(x) for x in fh]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r] + [(r["step"], r["eval_loss"]) for r in recs
                                                                    if "eval_loss" in r]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    write_corpus(d)
    assert main(["train", "--output-dir", str(d / "ref"), *tiny(d)]) == 0
    return d


def run_dir(out):
    return out / "mlm" / "hydra"


def copy_ref(ref, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ref / "ref", out)
    return out


def assert_matches_reference(ref, out):
    a, b = log(run_dir(ref / "ref")), log(run_dir(out))
    assert [s for s, _ in a] == [s for s, _ in b]
    for (s, x), (_, y) in zip(a, b):
        assert abs(x - y) <= 1e-6, (s, x, y)
    wa = load_file(run_dir(ref / "ref") / "model" / "model.safetensors")
    wb = load_file(run_dir(out) / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def _resume(ref, out, capsys, steps=STEPS):
    capsys.readouterr()
    rc = main(["train", "--output-dir", str(out), *tiny(ref, steps), "--resume"])
    return rc, capsys.readouterr().err


def damage(path, how):
    if how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    elif how == "garbage":
        size = os.path.getsize(path)
        with open(path, "wb") as fh:
            fh.write(random.Random(1).randbytes(max(size, 64)))
    elif how == "flipped":  # same size, one byte changed: only the checksum sees it
        with open(path, "r+b") as fh:
            fh.seek(os.path.getsize(path) // 2)
            b = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([b[0] ^ 0xFF]))
    else:
        os.remove(path)


FILES = ["model.safetensors", "optimizer.pt", "trainer_state.json", "config.json", "train_config.json",
         "rng-rank0.pt", "manifest.json", "tokenizer.json"]


@pytest.mark.parametrize("how", ["truncated", "garbage", "flipped", "deleted"])
@pytest.mark.parametrize("name", FILES)
def test_damaged_newest_checkpoint_falls_back_and_matches_unbroken_run(ref, tmp_path, capsys, name, how):
    out = copy_ref(ref, tmp_path)
    ck = run_dir(out) / "checkpoints"
    damage(ck / "step-0000006" / name, how)
    rc, err = _resume(ref, out, capsys)
    assert rc == 0, err
    assert "warning: skipping damaged checkpoint" in err and "step-0000006" in err, err
    assert "resuming from" in err and "step 4" in err
    assert_matches_reference(ref, out)
    # the damaged checkpoint was set aside, not deleted, and step 6 was written again
    assert (ck / "step-0000006.damaged").is_dir()
    assert C.verify_dir(str(ck / "step-0000006"), C._required(1))[0]["step"] == 6
    assert (ck / "latest").read_text() == "step-0000006"


@pytest.mark.parametrize("fault", ["latest deleted", "latest dangling", "latest garbage", "latest names damaged"])
def test_latest_pointer_faults_fall_back_to_newest_complete(ref, tmp_path, capsys, fault):
    out = copy_ref(ref, tmp_path)
    ck = run_dir(out) / "checkpoints"
    shutil.rmtree(ck / "step-0000006")  # so the resume has steps to train
    if fault == "latest deleted":
        (ck / "latest").unlink()
    elif fault == "latest dangling":
        (ck / "latest").write_text("step-0000006")
    elif fault == "latest garbage":
        (ck / "latest").write_bytes(b"\xff\x00junk")
    else:
        damage(ck / "step-0000004" / "model.safetensors", "truncated")
        (ck / "latest").write_text("step-0000004")
    rc, err = _resume(ref, out, capsys)
    assert rc == 0, err
    assert "latest" in err or "skipping damaged checkpoint" in err, err
    assert_matches_reference(ref, out)


def test_killed_checkpoint_write_is_ignored_and_replaced(ref, tmp_path, capsys):
    out = copy_ref(ref, tmp_path)
    ck = run_dir(out) / "checkpoints"
    os.replace(ck / "step-0000006", ck / "step-0000006.tmp")  # the kill came before the rename
    (ck / "step-0000006.tmp" / "manifest.json").unlink()
    (ck / "latest").write_text("step-0000004")
    rc, err = _resume(ref, out, capsys)
    assert rc == 0 and "warning" not in err, err
    assert_matches_reference(ref, out)
    assert not (ck / "step-0000006.tmp").exists()


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_no_complete_checkpoint_is_a_clear_error(ref, tmp_path, capsys, how):
    out = copy_ref(ref, tmp_path)
    ck = run_dir(out) / "checkpoints"
    for step in (2, 4, 6):
        damage(ck / f"step-{step:07d}" / "optimizer.pt", how)
    before = sorted(os.listdir(ck))
    rc, err = _resume(ref, out, capsys)
    assert rc == 2 and err.startswith("hydra-ssm: error: --resume: no complete checkpoint"), err  # before the data
    assert all(f"step-{s:07d}: optimizer.pt" in err for s in (2, 4, 6))
    assert sorted(os.listdir(ck)) == before  # nothing touched


def test_finished_run_resumes_without_training(ref, tmp_path, capsys):
    out = copy_ref(ref, tmp_path)
    rc, err = _resume(ref, out, capsys)
    assert rc == 0 and "warning" not in err, err
    assert_matches_reference(ref, out)


def test_extending_a_run_with_more_steps(ref, tmp_path, capsys):
    out = copy_ref(ref, tmp_path)
    rc, err = _resume(ref, out, capsys, steps=STEPS + 2)
    assert rc == 0, err
    steps = [s for s, _ in log(run_dir(out))]
    assert steps[:STEPS + 2] == list(range(1, STEPS + 3))
    # the first 6 steps are the reference's, untouched
    assert log(run_dir(out))[:STEPS] == log(run_dir(ref / "ref"))[:STEPS]
    # the resumed run is the same run: it prunes the checkpoints written before the resume too
    assert sorted(os.listdir(run_dir(out) / "checkpoints")) == ["latest", "step-0000004", "step-0000006", "step-0000008"]


def test_stale_checkpoints_of_another_run_are_refused_and_kept(ref, tmp_path, capsys):
    """The audit's case: an older run's step-0000040 made pruning delete every new checkpoint."""
    out = tmp_path / "out"
    stale = run_dir(out) / "checkpoints" / "step-0000040"
    shutil.copytree(run_dir(ref / "ref") / "checkpoints" / "step-0000006", stale)
    capsys.readouterr()
    assert main(["train", "--output-dir", str(out), *tiny(ref)]) == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints of an earlier run (step-0000040)" in err and "--resume" in err, err
    assert (stale / "manifest.json").is_file() and not (run_dir(out) / "metrics.jsonl").exists()


def test_prune_removes_only_this_runs_checkpoints(tmp_path):
    ck = tmp_path / "checkpoints"
    for step, run_id in ((2, "me"), (4, "me"), (6, "me"), (40, "other"), (8, None), (10, "me")):
        d = ck / f"step-{step:07d}"
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"x")
        if run_id:
            C.write_manifest(str(d), {"step": step, "run_id": run_id, "world_size": 1})
    (ck / "step-0000002.tmp").mkdir()
    C.prune(str(tmp_path), "me", 6, keep=2)
    # kept: the newest two of this run up to step 6, the other run's, the unknown one, ours beyond step 6
    assert sorted(os.listdir(ck)) == ["step-0000002.tmp", "step-0000004", "step-0000006", "step-0000008",
                                      "step-0000010", "step-0000040"]


@pytest.mark.parametrize("change, message", [
    ({"lr": 1e-2}, "--lr 0.005 -> 0.01"),
    ({"batch_size": 8}, "--batch-size 4 -> 8"),
    ({"seed": 3}, "--seed 0 -> 3"),
    ({"steps": 4}, "--steps 4 is below the checkpoint's step 6"),
    ({"dropout": 0.0}, "--dropout 0.1 -> 0.0"),
    ({"train_file": "elsewhere.txt"}, "--train-file"),
    ({"hidden_size": 32}, "--hidden-size 16 -> 32"),
])
def test_changed_options_on_resume_are_refused(ref, change, message):
    ck = C.newest_complete(str(run_dir(ref / "ref")), quiet=True)
    saved = ck.read_json("train_config.json")
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}).replace(resume=True)
    assert C.resume_point(str(run_dir(ref / "ref")), cfg, dict(saved), 1, quiet=True).step == 6
    with pytest.raises(UsageError, match="was trained with other options: .*" + message.replace("(", r"\(")
                       .replace(".", r"\.")):
        C.resume_point(str(run_dir(ref / "ref")), cfg, {**saved, **change}, 1, quiet=True)
    with pytest.raises(UsageError, match="1 process\\(es\\) wrote it, this run has 2"):
        C.resume_point(str(run_dir(ref / "ref")), cfg, dict(saved), 2, quiet=True)


def test_allowed_changes_on_resume(ref):
    ck = C.newest_complete(str(run_dir(ref / "ref")), quiet=True)
    saved = ck.read_json("train_config.json")
    free = {"steps": 100, "eval_every": 1, "eval_batches": 3, "checkpoint_every": 1, "keep_checkpoints": 5,
            "progress": True, "plot": True, "threads": 2, "device": "cpu", "output_dir": "moved"}
    assert C.resume_problems(saved, {**saved, **free}, ck.step) == []
    assert C.resume_problems(saved, {**saved, "steps": 5}, 4) == ["--steps 6 -> 5 (a run can be extended, not shortened)"]
