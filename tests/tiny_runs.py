"""A tiny text corpus and the options of tiny runs (seconds on one CPU thread), for the CLI and journey tests."""

import json
import os
import random
import subprocess
import sys

from paths import SRC


def write_corpus(d):
    """train.txt and val.txt of random words in directory ``d``."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 6))) for _ in range(200)]
    line = lambda: " ".join(rng.choice(words) for _ in range(12))  # noqa: E731
    (d / "train.txt").write_text("\n".join(line() for _ in range(300)))
    (d / "val.txt").write_text("\n".join(line() for _ in range(60)))


def tiny(d, steps=6):
    """Options of a 6-step run on the corpus in ``d``: checkpoints at steps 2, 4, 6 (all kept), dropout on."""
    return ["--train-file", str(d / "train.txt"), "--validation-file", str(d / "val.txt"), "--tokenizer", "byte",
            "--seq-len", "16", "--batch-size", "4", "--steps", str(steps), "--mixers", "hydra", "--hidden-size", "16",
            "--num-layers", "1", "--d-state", "4", "--headdim", "8", "--threads", "1", "--eval-every", "3",
            "--eval-batches", "1", "--progress", "false", "--plot", "false", "--checkpoint-every", "2",
            "--keep-checkpoints", "3", "--dropout", "0.1", "--lr", "5e-3", "--warmup-steps", "1"]


# A model of a few thousand parameters and a quiet run: the journeys' common command-line options.
TINY_CLI = ["--hidden-size", "32", "--num-layers", "1", "--d-state", "8", "--headdim", "16", "--num-heads", "2",
            "--seq-len", "32", "--vocab-size", "300", "--threads", "1", "--progress", "false", "--plot", "false"]


def write_book(path, chars: int):
    """One text file of about ``chars`` characters of the interpreter's own text (the default MLM corpus)."""
    from hydra_ssm.train.corpus import default_corpus

    path.write_text("\n".join(default_corpus(chars)[0]))
    return path


def write_split_book(d, chars: int, validation_chars: int, tokenizer_vocab: int | None = None):
    """train.txt and val.txt in ``d``: about ``chars`` characters of the default MLM corpus, its last
    ``validation_chars`` for validation; with ``tokenizer_vocab``, also a WordPiece tokenizer of that size
    trained on the training text, saved in ``d/tok``. Returns ``d``."""
    from hydra_ssm.train.corpus import default_corpus

    text = "\n".join(sum(default_corpus(chars), []))
    (d / "train.txt").write_text(text[:-validation_chars])
    (d / "val.txt").write_text(text[-validation_chars:])
    if tokenizer_vocab is not None:
        from hydra_ssm.train.tokenization import save_tokenizer, train_tokenizer

        save_tokenizer(train_tokenizer("wordpiece", [text[:-validation_chars]], tokenizer_vocab), str(d / "tok"))
    return d


def tiny_mlm_run(d, chars: int, *options: str):
    """``hydra-ssm train`` (masked LM, batch 8) on ``chars`` characters of text written to ``d/book.txt``, with the
    tiny model and then ``options``; returns the output directory ``d/run``."""
    from hydra_ssm.cli import main

    write_book(d / "book.txt", chars)
    out = d / "run"
    assert main(["train", "--train-file", str(d / "book.txt"), "--output-dir", str(out), "--batch-size", "8",
                 *TINY_CLI, *options]) == 0
    return out


def run_losses(run_dir):
    """(training losses, validation losses) of a run directory, each a list of (step, loss)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        recs = [json.loads(line) for line in fh]
    return ([(r["step"], r["loss"]) for r in recs if "loss" in r],
            [(r["step"], r["eval_loss"]) for r in recs if "eval_loss" in r])


def cli_env():
    """The environment of a ``hydra-ssm`` subprocess: this checkout's package first, one thread."""
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def torchrun_cli(nproc: int, argv: list) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node NPROC -m hydra_ssm.cli ARGV`` on a free port; output captured."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--rdzv-endpoint=localhost:0",
           "--rdzv-backend=c10d", "-m", "hydra_ssm.cli", *argv]
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)


def assert_same_curves(a_dir, b_dir, steps: int, evals: int, tol: float):
    """The runs in ``a_dir`` and ``b_dir`` logged the same steps and losses (to ``tol``, relative above 1), and
    their training loss moved (the comparison is not between two constant sequences). Returns b's curves."""
    a_train, a_eval = run_losses(a_dir)
    b_train, b_eval = run_losses(b_dir)
    assert len(a_train) == len(b_train) == steps and len(a_eval) == len(b_eval) == evals
    for (s1, a), (s2, b) in zip(a_train + a_eval, b_train + b_eval):
        assert s1 == s2 and abs(a - b) <= tol * max(1.0, abs(a)), (s1, a, b)
    values = [a for _, a in a_train]
    assert max(values) - min(values) > 1e-3
    return b_train, b_eval
