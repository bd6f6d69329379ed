"""Exact resume after SIGKILL, and 2 processes (DDP on gloo) following the single-process curve and resuming."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("transformers")

from hydra_ssm.cli import main  # noqa: E402
from hydra_ssm.train.corpus import default_corpus  # noqa: E402
from hydra_ssm.train.tokenization import save_tokenizer, train_tokenizer  # noqa: E402

from paths import SRC  # noqa: E402


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        recs = [json.loads(line) for line in fh]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r], [(r["step"], r["eval_loss"]) for r in recs if "eval_loss" in r]


def env():
    e = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return e


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    text = "\n".join(sum(default_corpus(40_000), []))
    (d / "train.txt").write_text(text[:-12_000])
    (d / "val.txt").write_text(text[-12_000:])
    tok = train_tokenizer("wordpiece", [text[:-12_000]], 300)
    save_tokenizer(tok, str(d / "tok"))
    return d


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
    ref_train, ref_eval = losses(ref / "mlm" / "hydra")
    assert len(ref_train) == 16

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hydra_ssm.cli", *args(corpus, out, 16, [*extra, "--debug-step-delay", "0.4"])]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    partial, _ = losses(out / "mlm" / "hydra")
    assert 8 <= len(partial) < 16  # killed mid-run, after a checkpoint

    assert main(args(corpus, out, 16, [*extra, "--resume"])) == 0
    got_train, got_eval = losses(out / "mlm" / "hydra")
    assert [s for s, _ in got_train] == list(range(1, 17))
    for (s1, a), (s2, b) in zip(got_train + got_eval, ref_train + ref_eval):
        assert s1 == s2 and abs(a - b) <= 1e-6, (s1, a, b)
    # an already finished run resumes to the same result without training
    assert main(args(corpus, out, 16, [*extra, "--resume"])) == 0
    assert losses(out / "mlm" / "hydra")[0] == got_train


def test_two_processes_follow_single_process_curve(corpus, tmp_path, capsys):
    single = tmp_path / "single"
    fast = ["--lr", "5e-3", "--warmup-steps", "1"]
    assert main(args(corpus, single, 6, fast)) == 0
    multi = tmp_path / "multi"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-endpoint=localhost:0", "--rdzv-backend=c10d", "-m", "hydra_ssm.cli", *args(corpus, multi, 6, fast)]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a_train, a_eval = losses(single / "mlm" / "hydra")
    b_train, b_eval = losses(multi / "mlm" / "hydra")
    assert len(a_train) == len(b_train) == 6 and len(a_eval) == len(b_eval) == 2
    for (s1, a), (s2, b) in zip(a_train + a_eval, b_train + b_eval):
        assert s1 == s2 and abs(a - b) <= 1e-4 * max(1.0, abs(a)), (s1, a, b)
    # the curve moved: the comparison is not between two constant sequences
    assert abs(a_train[0][1] - a_train[-1][1]) > 0.05
    # the checkpoint records both processes' RNG files, and only 2 processes may resume it
    ck = multi / "mlm" / "hydra" / "checkpoints" / "step-0000006"
    files = json.loads((ck / "manifest.json").read_text())["files"]
    assert {"rng-rank0.pt", "rng-rank1.pt"} <= set(files)
    capsys.readouterr()
    assert main(args(corpus, multi, 6, [*fast, "--resume"])) == 2
    assert "2 process(es) wrote it, this run has 1" in capsys.readouterr().err
    # extended by 2 processes: each restores its own RNG file; the first 6 steps stay as they were
    r = subprocess.run([*cmd[:-len(args(corpus, multi, 6, fast))], *args(corpus, multi, 8, [*fast, "--resume"])],
                       env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    c_train, _ = losses(multi / "mlm" / "hydra")
    assert [s for s, _ in c_train] == list(range(1, 9)) and c_train[:6] == b_train
