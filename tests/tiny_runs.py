"""A tiny text corpus and the options of a tiny masked-LM run (seconds on one CPU thread), for the CLI tests."""

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
