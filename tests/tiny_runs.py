"""A tiny text corpus and the options of tiny runs (seconds on one CPU thread), for the CLI and journey tests."""

import random


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


def tiny_mlm_run(d, chars: int, *options: str):
    """``hydra-ssm train`` (masked LM, batch 8) on ``chars`` characters of text written to ``d/book.txt``, with the
    tiny model and then ``options``; returns the output directory ``d/run``."""
    from hydra_ssm.cli import main

    write_book(d / "book.txt", chars)
    out = d / "run"
    assert main(["train", "--train-file", str(d / "book.txt"), "--output-dir", str(out), "--batch-size", "8",
                 *TINY_CLI, *options]) == 0
    return out
