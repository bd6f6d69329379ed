"""Which mixers solve the state-tracking tasks (parity, S5) at which length: a seeded study.

    hydra-ssm bench-state-tracking --variants hydra mha bi_deltanet:allow_neg_eigval=True \\
        --tasks parity --lengths 64 256 --seeds 0 1 2 --steps 300 --out runs/state-tracking

trains one model per cell (variant x task x length x seed) with ``hydra-ssm train``'s machinery
(``--task synthetic --synthetic-task TASK --state-len LENGTH``, in this process) and prints a markdown
table: per (variant, task, length) the final validation accuracy of every seed (per-position accuracy on
the whole validation set), their mean, and how many seeds solved the cell (accuracy >= ``--solved``,
0.99 by default). ``--eval-lengths 256 1024`` also evaluates every trained model on validation sequences
of those lengths (length generalisation: a model that tracks the state solves any length). A variant is a registered mixer name, optionally with mixer options:
``NAME:key=value,key=value`` (values read as Python literals, else strings), which reach the mixer as
``hydra-ssm train --mixer-option key=value`` does.

``--out DIR`` receives ``cells/<variant>/<task>-L<length>-seed<seed>.json`` (one per finished cell), the
training runs under ``runs/``, and ``results.md`` / ``results.json`` (the table and every cell). A cell
whose JSON exists is not trained again, so an interrupted study continues where it stopped (a cell cut
in the middle resumes from its last checkpoint); a cell JSON written with other options is an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import time

PROG = "hydra-ssm bench-state-tracking"
TASKS = ("parity", "s5")
# options that do not change a cell's result: a finished cell is reused whatever they were
NOT_RESULT = ("output_dir", "resume", "progress", "plot", "threads", "device", "checkpoint_every", "keep_checkpoints")


class Variant:
    """A mixer and its options, from ``NAME`` or ``NAME:key=value,key=value``."""

    def __init__(self, text: str):
        from ..train.config import UsageError, mixer_options

        self.text = text
        name, _, opts = text.partition(":")
        self.mixer = name.strip()
        if not self.mixer:
            raise UsageError(f"--variants {text!r}: expected NAME or NAME:key=value,key=value")
        if ":" in text and not opts.strip():
            raise UsageError(f"--variants {text!r}: no options after ':' (expected NAME:key=value,...)")
        # split at the commas that start the next key=, so that a value may hold commas: dt_limit=(0.0,1.0)
        items = re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", opts)
        self.options = mixer_options([o for o in items if o.strip()], f"--variants {text}")

    @property
    def slug(self) -> str:
        """A directory name for the variant: ``bi_deltanet_allow_neg_eigval=True``."""
        parts = [self.mixer] + [f"{k}={v}" for k, v in self.options.items()]
        return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "_".join(parts))


def cell_name(task: str, length: int, seed: int) -> str:
    return f"{task}-L{length}-seed{seed}"


def cell_config(args, variant: Variant, task: str, length: int, seed: int):
    """The TrainConfig of one cell (validated): a UsageError names what is wrong."""
    from ..train.config import UsageError, build_config, coerce, parse_option

    run_dir = os.path.join(args.out, "runs", variant.slug, cell_name(task, length, seed))
    values = dict(task="synthetic", synthetic_task=task, state_len=length, mixers=[variant.mixer],
                  mixer_options=variant.options, seed=seed, steps=args.steps, hidden_size=args.d_model,
                  num_layers=args.n_layers, lr=args.lr, batch_size=args.batch_size,
                  synthetic_train_size=args.train_size, synthetic_val_size=args.val_size,
                  eval_every=args.eval_every or args.steps, eval_batches=0,
                  warmup_steps=min(args.warmup_steps, args.steps),
                  output_dir=run_dir, resume=os.path.isdir(run_dir),  # a cell cut short continues exactly
                  progress=False, plot=False, threads=args.threads, device=args.device)
    for text in args.train_option:
        key, value = parse_option(text, "--train-option")
        if key in values:
            raise UsageError(f"--train-option {text}: the study sets {key} itself (see {PROG} --help)")
        values[key] = coerce(key, value)
    try:
        return build_config({}, values)
    except UsageError as err:
        raise UsageError(f"cell {variant.text} {task} L={length} seed={seed}: {err}") from None


def check_model(cfg) -> None:
    """Build the cell's model config (on no data): bad mixer options fail here, before any training."""
    from ..train.loop import model_config
    from ..train.tasks import TaskData

    probe = TaskData("lm", {}, {}, vocab_size=200, seq_len=cfg.state_len + 2)
    model_config(cfg, probe, cfg.mixers[0], cfg.intermediate_size)


def result_config(cfg) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in NOT_RESULT}


def run_cell(cfg, variant: Variant, task: str, length: int, seed: int, path: str) -> dict:
    """Train one cell (its tables go to stderr) and write its JSON atomically."""
    from ..train.checkpoints import atomic_json
    from ..train.runner import run

    with contextlib.redirect_stdout(sys.stderr):
        result = run(cfg)[0]
    cell = {"variant": variant.text, "mixer": variant.mixer, "options": variant.options, "task": task,
            "length": length, "seed": seed, "val_accuracy": result["val_accuracy"], "val_loss": result["val_loss"],
            "params": result["params"], "steps": result["steps"], "wall_s": result["wall_s"],
            "run_dir": result["run_dir"], "config": result_config(cfg)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_json(path, cell)
    return cell


def read_cell(path: str, cfg) -> dict:
    """A finished cell's JSON; UsageError when it was trained with other options."""
    from ..train.config import UsageError

    try:
        with open(path) as fh:
            cell = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: cannot read a finished cell ({err}); move it away to train the cell again") from None
    want = result_config(cfg)
    saved = cell.get("config", {})
    diff = [k for k in sorted(set(want) | set(saved)) if want.get(k) != saved.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {want.get(k)!r}" for k in diff[:4])
        raise UsageError(f"{path} was trained with other options ({shown}); use another --out or the same options")
    return cell


def longer_accuracy(cell: dict, length: int, val_size: int, batch_size: int) -> float | None:
    """Per-position accuracy of a cell's trained model on ``val_size`` validation sequences of another
    ``length`` (the validation stream of the task), or None when the model cannot read that length (learned
    position embeddings shorter than it)."""
    import torch

    from ..models import HydraForMaskedLM
    from ..train.synthetic import VAL_SEED, parity_examples, s5_examples

    model = HydraForMaskedLM.from_pretrained(os.path.join(cell["run_dir"], "model")).eval()
    config = model.config
    if config.use_position_embeddings and config.max_position_embeddings < length + 2:
        return None
    make = {"parity": parity_examples, "s5": s5_examples}[cell["task"]]
    ids, labels = make(val_size, length, seed=VAL_SEED)
    right = total = 0
    with torch.no_grad():
        for start in range(0, val_size, batch_size):
            logits = model(input_ids=ids[start: start + batch_size]).logits
            y = labels[start: start + batch_size]
            keep = y != -100
            right += int((logits.argmax(-1) == y)[keep].sum())
            total += int(keep.sum())
    return right / max(total, 1)


def table(cells: list[dict], seeds: list[int], solved: float, eval_lengths: list[int] = ()) -> str:
    """Markdown: one row per (variant, task, length), in the order the cells were planned."""
    groups: dict = {}
    for c in cells:
        groups.setdefault((c["variant"], c["task"], c["length"]), []).append(c)
    head = ["variant", "task", "L", f"val acc (seeds {', '.join(map(str, seeds))})", "mean", f"solved (>= {solved})"]
    head += [f"at L={n}: acc (seeds), solved" for n in eval_lengths]
    rows = []
    for (variant, task, length), cs in groups.items():
        cs = sorted(cs, key=lambda c: seeds.index(c["seed"]))
        accs = [c["val_accuracy"] for c in cs]
        row = [variant, task, str(length), ", ".join(f"{a:.4f}" for a in accs), f"{statistics.mean(accs):.4f}",
               f"{sum(a >= solved for a in accs)}/{len(accs)}"]
        for n in eval_lengths:
            longer = [c.get("longer", {}).get(str(n)) for c in cs]
            if any(a is None for a in longer):
                row.append("n/a (positions learned up to L)")
            else:
                row.append(", ".join(f"{a:.4f}" for a in longer) + f"; {sum(a >= solved for a in longer)}/{len(longer)}")
        rows.append(row)
    widths = [max(3, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells_: "| " + " | ".join(c.ljust(w) for c, w in zip(cells_, widths)) + " |"  # noqa: E731
    sep = "| " + " | ".join("-" * w if i < 2 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |"
    return "\n".join([line(head), sep] + [line(r) for r in rows])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["hydra", "mha"], metavar="VARIANT",
                   help="mixers: NAME or NAME:key=value,key=value (default: hydra mha)")
    p.add_argument("--tasks", nargs="+", default=["parity"], choices=TASKS, help="default: parity")
    p.add_argument("--lengths", nargs="+", type=int, default=[16], help="--state-len of the cells (default: 16)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (default: 0); the data do "
                   "not depend on them")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per cell (default: 300)")
    p.add_argument("--d-model", type=int, default=64, help="model width (default: 64)")
    p.add_argument("--n-layers", type=int, default=2, help="blocks (default: 2)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: 3e-3)")
    p.add_argument("--batch-size", type=int, default=32, help="default: 32")
    p.add_argument("--warmup-steps", type=int, default=20, help="default: 20")
    p.add_argument("--train-size", type=int, default=20000, help="generated training sequences (default: 20000)")
    p.add_argument("--val-size", type=int, default=256, help="generated validation sequences (default: 256)")
    p.add_argument("--eval-lengths", nargs="+", type=int, default=[], help="also evaluate every trained model on "
                   "validation sequences of these lengths (length generalisation; default: none)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: 0 = only at the end)")
    p.add_argument("--solved", type=float, default=0.99, help="validation accuracy that counts as solved "
                   "(default: 0.99)")
    p.add_argument("--train-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of 'hydra-ssm train' for every cell (repeatable), e.g. headdim=16")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0 = all cores)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="runs/state-tracking", help="output directory (default: runs/state-tracking)")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..train.config import UsageError

    args = build_parser().parse_args(argv)
    try:
        return study(args)
    except UsageError as err:
        print(f"hydra-ssm: error: {err}", file=sys.stderr)
        return 2


def study(args) -> int:
    from ..bench.machine import machine_description
    from ..train.checkpoints import atomic_json, atomic_write, make_output_dir
    from ..train.config import UsageError

    for name in ("steps", "d_model", "n_layers", "batch_size", "train_size", "val_size"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 < args.solved <= 1:
        raise UsageError(f"--solved must be in (0, 1], got {args.solved}")
    for name in ("variants", "tasks", "lengths", "seeds"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            raise UsageError(f"--{name} lists a value twice: {' '.join(map(str, values))}")
    for name in ("lengths", "eval_lengths"):
        if any(n < 1 for n in getattr(args, name)):
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {' '.join(map(str, getattr(args, name)))}")
    variants = [Variant(v) for v in args.variants]
    slugs = [v.slug for v in variants]
    if len(set(slugs)) != len(slugs):
        raise UsageError(f"--variants: two variants share a directory name ({', '.join(slugs)})")
    # every cell's options are checked before any training
    plan = []
    for v in variants:
        for task in args.tasks:
            for length in args.lengths:
                for seed in args.seeds:
                    cfg = cell_config(args, v, task, length, seed)
                    check_model(cfg)
                    path = os.path.join(args.out, "cells", v.slug, cell_name(task, length, seed) + ".json")
                    plan.append((v, task, length, seed, cfg, path))
    make_output_dir(args.out, "--out")
    cells, t0, trained = [], time.perf_counter(), 0
    for i, (v, task, length, seed, cfg, path) in enumerate(plan):
        what = f"[{i + 1}/{len(plan)}] {v.text} {task} L={length} seed={seed}"
        if os.path.isfile(path):
            cells.append(read_cell(path, cfg))
            print(f"{what}: done earlier, val acc {cells[-1]['val_accuracy']:.4f}", file=sys.stderr, flush=True)
            continue
        print(f"{what} ...", file=sys.stderr, flush=True)
        cells.append(run_cell(cfg, v, task, length, seed, path))
        trained += 1
        print(f"{what}: val acc {cells[-1]['val_accuracy']:.4f} in {cells[-1]['wall_s']:.0f}s", file=sys.stderr,
              flush=True)
    for (v, task, length, seed, cfg, path), cell in zip(plan, cells):  # length generalisation, once per cell
        longer = cell.setdefault("longer", {})
        missing = [n for n in args.eval_lengths if str(n) not in longer]
        for n in missing:
            longer[str(n)] = longer_accuracy(cell, n, args.val_size, args.batch_size)
        if missing:
            atomic_json(path, cell)
    text = table(cells, args.seeds, args.solved, args.eval_lengths)
    machine = machine_description(plan[0][4].device if plan[0][4].device != "auto" else "cpu")
    budget = (f"{args.steps} steps x batch {args.batch_size}, d_model {args.d_model}, {args.n_layers} layers, "
              f"lr {args.lr}, {args.train_size} training / {args.val_size} validation sequences")
    print(f"\n{text}\n\n{budget}; {trained} cells trained now, {len(cells) - trained} read back "
          f"({time.perf_counter() - t0:.0f}s)")
    md = f"# hydra-ssm state-tracking study\n\n{text}\n\n{budget}.\n\nMachine: {machine}.\n"
    atomic_write(os.path.join(args.out, "results.md"), lambda fh: fh.write(md))
    atomic_json(os.path.join(args.out, "results.json"), {"cells": cells, "solved": args.solved, "machine": machine,
                                                         "budget": budget})
    return 0


if __name__ == "__main__":
    sys.exit(main())
