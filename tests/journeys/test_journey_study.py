"""The matrix-mixer study as a user runs it: `hydra-ssm study --preset smoke`, its report and figures, continuing
an interrupted study, and the errors that protect its run directories."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from hydra_ssm.study import PRESETS, Arm, Grid, Preset, Section, Task, best_run, main  # noqa: E402
from hydra_ssm.train.docstrings import TOPICS, docstring_topics, write_docstring_topics  # noqa: E402


def _runs(out):
    return sorted(os.path.relpath(os.path.join(d), out) for d, _, files in os.walk(os.path.join(out, "cells"))
                  if "study_run.json" in files)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    out, results = str(root / "runs"), str(root / "docs" / "results.md")
    proc = subprocess.run([sys.executable, "-m", "hydra_ssm.cli", "study", "--preset", "smoke", "--output-dir", out,
                           "--results", results, "--jobs", "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, results, proc


def test_smoke_study_writes_every_run_and_the_report(smoke):
    out, results, proc = smoke
    preset = PRESETS["smoke"]
    runs = _runs(out)
    # per (section task, arm): len(lrs) sweep runs + (seeds - 1) more; pretraining: the sweep only
    arms = {(t, a.name) for s in preset.sections for t in s.tasks for a in s.arms}
    pretrained_arms = {a for t, a in arms if preset.task(t).pretrain}
    expected = len(arms) * (len(preset.lrs) + preset.seeds - 1) + len(pretrained_arms) * len(preset.lrs)
    assert len(runs) == expected, runs
    for r in runs:
        assert os.path.isfile(os.path.join(out, r, "result.json")), r
    text = open(results).read()
    for needle in ("## What the study found", "**Claim 1, SAM beats DI: ", "**Claim 3, Hydra replaces attention "
                   "(docs).**", "**Where Hydra loses**", "| toeplitz-di |", "| mha-mlp4 |", "| hydra-no-shift |",
                   "SAM minus DI", "hydra-ssm study --preset smoke"):
        assert needle in text, needle
    for name in ("study-smoke-family.png", "study-smoke-drop-in.png", "study-smoke-curves.png"):
        path = os.path.join(os.path.dirname(results), "img", name)
        assert os.path.getsize(path) > 1000, path
        assert f"(img/{name})" in text
    # every fine-tuning run started from its arm's best pretraining run, and kept the topic names
    for r in (r for r in runs if r.startswith(os.path.join("cells", "docs", ""))):
        cfg = json.load(open(os.path.join(out, r, "study_run.json")))["config"]
        assert os.sep + "docs-pretrain" + os.sep in cfg["init_from"]
        model_cfg = json.load(open(os.path.join(out, r, "model", "config.json")))
        assert sorted(model_cfg["id2label"].values()) == sorted(TOPICS)


def test_a_rerun_trains_nothing_and_an_interrupted_run_continues(smoke, tmp_path):
    out, results, _ = smoke
    again = subprocess.run([sys.executable, "-m", "hydra_ssm.cli", "study", "--preset", "smoke", "--output-dir", out,
                            "--results", str(tmp_path / "r.md")], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[study]" not in again.stderr  # nothing was trained
    assert open(tmp_path / "r.md").read().split("## What the study found")[1] == \
        open(results).read().split("## What the study found")[1]
    # a run killed after its checkpoint: no result.json; the next invocation resumes it alone
    victim = os.path.join(out, _runs(out)[0])
    before = json.load(open(os.path.join(victim, "result.json")))
    os.remove(os.path.join(victim, "result.json"))
    third = subprocess.run([sys.executable, "-m", "hydra_ssm.cli", "study", "--preset", "smoke", "--output-dir", out,
                            "--results", str(tmp_path / "r2.md")], capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    assert third.stderr.count("[study]") == 1, third.stderr[-2000:]
    after = json.load(open(os.path.join(victim, "result.json")))
    assert after["val_accuracy"] == before["val_accuracy"] and after["steps"] == before["steps"]


def test_a_run_directory_with_other_settings_is_refused(smoke, tmp_path, capsys):
    out, _, _ = smoke
    victim = os.path.join(out, _runs(out)[-1], "study_run.json")
    original = open(victim).read()
    try:
        changed = json.loads(original)
        changed["config"]["lr"] = 0.5
        open(victim, "w").write(json.dumps(changed))
        assert main(["--preset", "smoke", "--output-dir", out, "--report-only",
                     "--results", str(tmp_path / "x.md")]) == 2
        err = capsys.readouterr().err
        assert "trained with other settings" in err and os.path.dirname(victim) in err
        # a run recorded before a TrainConfig field existed (the field at its default) is the same run
        older = json.loads(original)
        del older["config"]["mixer_init"]
        open(victim, "w").write(json.dumps(older))
        assert main(["--preset", "smoke", "--output-dir", out, "--report-only",
                     "--results", str(tmp_path / "y.md")]) == 0
    finally:
        open(victim, "w").write(original)


def test_bad_options_are_refused(capsys):
    assert main(["--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--preset", "nope"])


def _toy_preset():
    arms = (Arm("a", "hydra"), Arm("b", "mha"))
    return Preset("toy", "toy", {"steps": 2}, (Task("digits", "digits", {"task": "image"}),),
                  (Section("s", "S", "?", ("digits",), arms, "a"),), (1e-3, 3e-3), 3)


def test_the_sweep_picks_the_rate_then_the_seeds_follow(tmp_path):
    grid = Grid(_toy_preset(), str(tmp_path))
    runs = grid.runs({})
    assert [(r.arm.name, r.lr, r.seed) for r in runs] == [("a", 1e-3, 0), ("a", 3e-3, 0), ("b", 1e-3, 0),
                                                          ("b", 3e-3, 0)]
    assert runs[2].width and not runs[0].width  # b's MLP is matched to the reference a
    results = {runs[0].directory: {"val_accuracy": 0.5}, runs[1].directory: {"val_accuracy": -math.inf},
               runs[2].directory: {"val_accuracy": 0.1}}  # a's rate 3e-3 diverged; b's sweep is not done
    named = grid.runs(results)
    assert [(r.arm.name, r.lr, r.seed) for r in named[2:4]] == [("a", 1e-3, 1), ("a", 1e-3, 2)]
    assert len(named) == 6
    assert best_run(runs[2:4], results) is None
    results[runs[3].directory] = {"val_accuracy": 0.1}
    assert best_run(runs[2:4], results).lr == 1e-3  # a tie goes to the first rate


def test_two_sections_may_not_give_one_name_two_settings(tmp_path):
    p = _toy_preset()
    clash = Section("t", "T", "?", ("digits",), (Arm("a", "hydra", {"shift": False}),), "a")
    p = Preset(p.name, p.description, p.base, p.tasks, p.sections + (clash,), p.lrs, p.seeds)
    with pytest.raises(ValueError, match="two sections name arm 'a'"):
        Grid(p, str(tmp_path)).runs({})


def test_docstring_topics_are_real_labelled_texts_split_once(tmp_path):
    rows = docstring_topics()
    labels = {r["label"] for r in rows}
    assert labels == set(TOPICS) and len(rows) > 2000
    assert len({r["text"] for r in rows}) == len(rows)
    train, val = write_docstring_topics(str(tmp_path))
    read = {p: list(csv.DictReader(open(p, newline=""))) for p in (train, val)}
    assert {r["text"] for r in read[train]}.isdisjoint(r["text"] for r in read[val])
    assert len(read[train]) + len(read[val]) == len(rows)
    assert 0.15 < len(read[val]) / len(rows) < 0.25
    assert len({r["label"] for r in read[val][:50]}) >= 6  # the files mix the topics
    assert docstring_topics() == rows  # deterministic


def test_two_studies_may_not_share_a_directory(tmp_path, capsys):
    import fcntl

    out = tmp_path / "runs"
    out.mkdir()
    with open(out / "study.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["--preset", "smoke", "--output-dir", str(out)]) == 2
    assert "another hydra-ssm study is running in" in capsys.readouterr().err
