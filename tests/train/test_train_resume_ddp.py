"""Exact resume after SIGKILL, and 2 processes (DDP on gloo) following the single-process curve and resuming."""

import json
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("transformers")

from hydra_ssm.cli import main  # noqa: E402

from tiny_runs import assert_same_curves, cli_env, run_losses, torchrun_cli, write_split_book  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_split_book(tmp_path_factory.mktemp("corpus"), 40_000, 12_000, tokenizer_vocab=300)


def args(corpus, out, steps, extra=()):
    return ["train", "--train-file", str(corpus / "train.txt"), "--validation-file", str(corpus / "val.txt"),
            "--tokenizer-from", str(corpus / "tok"), "--seq-len", "32", "--batch-size", "8", "--steps", str(steps), "--mixers", "hydra",
            "--hidden-size", "32", "--num-layers", "2", "--d-state", "8", "--headdim", "16", "--threads", "1",
            "--eval-every", "4", "--eval-batches", "2", "--progress", "false", "--plot", "false",
            "--output-dir", str(out), *extra]


def test_resume_after_sigkill_matches_unbroken_run(corpus, tmp_path):
    # dropout on: the resumed run must also restore the RNG states to match
    extra = ["--dropout", "0.1", "--checkpoint-every", "4", "--keep-checkpoints", "2"]
    ref = tmp_path / "ref"
    assert main(args(corpus, ref, 16, extra)) == 0
    ref_train, ref_eval = run_losses(ref / "mlm" / "hydra")
    assert len(ref_train) == 16

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hydra_ssm.cli", *args(corpus, out, 16, [*extra, "--debug-step-delay", "0.4"])]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = out / "mlm" / "hydra" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text() >= "step-0000008":
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial, _ = run_losses(out / "mlm" / "hydra")
    assert 8 <= len(partial) < 16  # killed mid-run, after a checkpoint

    assert main(args(corpus, out, 16, [*extra, "--resume"])) == 0
    got_train, got_eval = run_losses(out / "mlm" / "hydra")
    assert [s for s, _ in got_train] == list(range(1, 17))
    for (s1, a), (s2, b) in zip(got_train + got_eval, ref_train + ref_eval):
        assert s1 == s2 and abs(a - b) <= 1e-6, (s1, a, b)
    # an already finished run resumes to the same result without training
    assert main(args(corpus, out, 16, [*extra, "--resume"])) == 0
    assert run_losses(out / "mlm" / "hydra")[0] == got_train


def test_two_processes_follow_single_process_curve(corpus, tmp_path, capsys):
    single = tmp_path / "single"
    fast = ["--lr", "5e-3", "--warmup-steps", "1"]
    assert main(args(corpus, single, 6, fast)) == 0
    multi = tmp_path / "multi"
    r = torchrun_cli(2, args(corpus, multi, 6, fast))
    assert r.returncode == 0, r.stderr[-3000:]
    b_train, _ = assert_same_curves(single / "mlm" / "hydra", multi / "mlm" / "hydra", 6, 2, 1e-4)
    # the checkpoint records both processes' RNG files, and only 2 processes may resume it
    ck = multi / "mlm" / "hydra" / "checkpoints" / "step-0000006"
    files = json.loads((ck / "manifest.json").read_text())["files"]
    assert {"rng-rank0.pt", "rng-rank1.pt"} <= set(files)
    capsys.readouterr()
    assert main(args(corpus, multi, 6, [*fast, "--resume"])) == 2
    assert "2 process(es) wrote it, this run has 1" in capsys.readouterr().err
    # extended by 2 processes: each restores its own RNG file; the first 6 steps stay as they were
    r = torchrun_cli(2, args(corpus, multi, 8, [*fast, "--resume"]))
    assert r.returncode == 0, r.stderr[-3000:]
    c_train, _ = run_losses(multi / "mlm" / "hydra")
    assert [s for s, _ in c_train] == list(range(1, 9)) and c_train[:6] == b_train
