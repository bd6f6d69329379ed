"""Runs of several mixers and tasks with one budget: data prepared once per task, results table, plots."""

from __future__ import annotations

import json
import os
import sys
import time

from .checkpoints import atomic_json, atomic_write, load_model_dir, make_output_dir, resume_point, run_config
from .config import TrainConfig, UsageError
from .tasks import TaskData, classify_data, image_data, mlm_data
from .tokenization import load_tokenizer, save_tokenizer
from .loop import Dist, mlp_widths, model_config, train_run


def task_label(cfg: TrainConfig, task: str) -> str:
    return f"synthetic-{cfg.synthetic_task}" if task == "synthetic" else task


def build_task(cfg: TrainConfig, task: str, tokenizer=None):
    from .synthetic import synthetic_data

    if task == "mlm":
        return mlm_data(cfg, tokenizer)
    if task == "classify":
        return classify_data(cfg, tokenizer)
    if task == "image":
        return image_data(cfg)
    return synthetic_data(cfg)


def prepare_task(cfg: TrainConfig, task: str, out_dir: str, d: Dist):
    """Task data on every process; a trained tokenizer comes from rank 0 (saved in out_dir/<task>/tokenizer)."""
    tok_dir = os.path.join(out_dir, task_label(cfg, task), "tokenizer")
    trains_tokenizer = task in ("mlm", "classify")
    given = None
    if trains_tokenizer and cfg.tokenizer_from:
        given = load_tokenizer(cfg.tokenizer_from)
    elif trains_tokenizer and cfg.init_from:
        given = load_tokenizer(cfg.init_from)
    elif trains_tokenizer and cfg.resume and os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        given = load_tokenizer(tok_dir)
    if not trains_tokenizer or given is not None or d.world == 1:
        data = build_task(cfg, task, given)
        if d.main and trains_tokenizer and given is None:
            save_tokenizer(data.tokenizer, tok_dir)
        return data
    data = None
    if d.main:
        data = build_task(cfg, task, None)
        save_tokenizer(data.tokenizer, tok_dir)
    d.barrier()
    if not d.main:
        data = build_task(cfg, task, load_tokenizer(tok_dir))
    return data


def run(cfg: TrainConfig) -> list[dict]:
    import torch

    threads = torch.get_num_threads()
    try:
        return _run(cfg)
    finally:  # in-process callers (tests, notebooks) get their thread count back
        torch.set_num_threads(threads)


def _run(cfg: TrainConfig) -> list[dict]:
    d = Dist(cfg)
    tasks = cfg.tasks or [cfg.task]
    out = cfg.output_dir
    make_output_dir(out)
    t0 = time.perf_counter()
    # everything that can fail on bad input happens here, before any training
    for task in tasks:  # model options first (cheap), with placeholder data sizes
        if task in ("mlm", "classify", "synthetic") and not cfg.init_from:
            probe = TaskData("mlm", {}, {}, vocab_size=cfg.vocab_size, seq_len=cfg.seq_len)
            for m in cfg.mixers:
                model_config(cfg, probe, m, cfg.intermediate_size)
    for task in tasks:  # before the data (and a tokenizer) are written: another run's checkpoints, a bad resume
        for m in ([] if cfg.init_from else cfg.mixers):  # (the MLP widths are compared once the data are known)
            early = {k: v for k, v in run_config(cfg, m, 0).items() if k != "intermediate_size"}
            resume_point(os.path.join(out, task_label(cfg, task), m), cfg, early, d.world, quiet=True)
    data = {}
    for task in tasks:
        if d.main:
            print(f"[hydra-ssm] preparing data for {task_label(cfg, task)} ...", file=sys.stderr, flush=True)
        data[task] = prepare_task(cfg, task, out, d)
    plan = []
    for task in tasks:
        td = data[task]
        mixers = cfg.mixers
        if cfg.init_from and td.kind == "seqcls":
            with open(os.path.join(cfg.init_from, "config.json")) as fh:
                start = json.load(fh)
            mixers = [start.get("matrix_mixer_type", "hydra")]
            longest = start.get("max_position_embeddings", cfg.seq_len)
            if start.get("use_position_embeddings") and cfg.seq_len > longest:
                raise UsageError(f"--seq-len {cfg.seq_len} is longer than the {longest} positions of the --init-from "
                                 f"model ({cfg.init_from}); use --seq-len {longest} or less")
        for m in mixers:
            model_config(cfg, td, m, cfg.intermediate_size)  # validates
        widths = mlp_widths(cfg, td, mixers)
        for m in mixers:
            if widths[m] != cfg.intermediate_size:
                model_config(cfg, td, m, widths[m])
        plan += [(task, m, widths[m]) for m in mixers]
    for task, mixer, width in plan:  # another run's checkpoints, or a resume with changed options: stop now
        resume_point(os.path.join(out, task_label(cfg, task), mixer), cfg, run_config(cfg, mixer, width), d.world,
                     quiet=True)
    if d.main:
        print(f"[hydra-ssm] data ready in {time.perf_counter() - t0:.1f}s; "
              + "; ".join(f"{task_label(cfg, t)}: {_describe(data[t])}" for t in tasks), file=sys.stderr, flush=True)
    results = []
    for task, mixer, width in plan:
        label = f"{task_label(cfg, task)}/{mixer}"
        run_dir = os.path.join(out, task_label(cfg, task), mixer)
        results.append(train_run(cfg, data[task], mixer, run_dir, d, width, label=label))
    if d.main:
        report(cfg, results, time.perf_counter() - t0, d.device)
    return results


def _describe(td) -> str:
    return f"{td.num_train()} train / {td.num_val()} val examples, seq len {td.seq_len}" + (
        f", vocab {td.vocab_size}" if td.vocab_size else "") + (
        f" (validation: {td.info['validation']})" if td.info.get("validation") else "")


#: a model whose validation accuracy rose by more than this over the last quarter of its steps was still learning
STILL_LEARNING = 0.01


def late_gain(evals: list[tuple[int, float]]) -> float | None:
    """Validation accuracy gained over the last quarter of the steps, from (step, accuracy) evaluations in step
    order: the last one minus the last one at or before 75% of the last step (None with fewer than two)."""
    if len(evals) < 2:
        return None
    last = evals[-1][0]
    before = [acc for step, acc in evals if step <= 0.75 * last]
    return evals[-1][1] - (before[-1] if before else evals[0][1])


def eval_curve(run_dir: str) -> list[tuple[int, float]]:
    """(step, validation accuracy) of every evaluation in a run directory's metrics.jsonl ([] without one)."""
    try:
        evals = read_metrics(run_dir)[1]
    except OSError:
        return []
    return [(e["step"], e["eval_accuracy"]) for e in evals]


def run_late_gain(run_dir: str) -> float | None:
    """:func:`late_gain` of a run directory's metrics.jsonl (None if it has none)."""
    return late_gain(eval_curve(run_dir))


def table(results: list[dict]) -> str:
    head = ["task", "mixer", "params", "steps", "val acc", "late gain", "val loss", "tokens/s", "wall s"]
    gains = [run_late_gain(r["run_dir"]) if "run_dir" in r else None for r in results]
    rows = [[r["task"], r["mixer"], f"{r['params']:,}", str(r["steps"]), f"{r['val_accuracy']:.4f}",
             "-" if g is None else f"{g:+.4f}", f"{r['val_loss']:.4f}", f"{r['tokens_per_s']:,.0f}",
             f"{r['wall_s']:.1f}"] for r, g in zip(results, gains)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"  # noqa: E731
    sep = "| " + " | ".join(("-" * w if i < 2 else "-" * (w - 1) + ":") for i, w in enumerate(widths)) + " |"
    return "\n".join([line(head), sep] + [line(r) for r in rows])


def report(cfg: TrainConfig, results: list[dict], total_s: float, device="cpu") -> None:
    from ..bench.machine import machine_description

    text = table(results)
    machine = machine_description(device)
    budget = f"same budget per run: {cfg.steps} steps x batch {cfg.batch_size}; seed {cfg.seed}"
    meaning = reading(results)
    print("\n" + text + f"\n\n{budget}; total {total_s:.0f}s ({machine})\n{meaning}")
    md = (f"# hydra-ssm results\n\n{text}\n\n{budget}. Total wall time {total_s:.0f}s.\n\n{meaning}\n\n"
          f"Machine: {machine}.\n")
    atomic_write(os.path.join(cfg.output_dir, "results.md"), lambda fh: fh.write(md))
    atomic_json(os.path.join(cfg.output_dir, "results.json"),
               {"results": results, "total_wall_s": total_s, "machine": machine, "config": cfg.to_dict()})
    if cfg.plot:
        try:
            path = plot_curves(results, os.path.join(cfg.output_dir, "curves.png"))
            print(f"learning curves: {path}")
        except ImportError:
            print("matplotlib is not installed: no plot (pip install 'hydra-ssm[train]')", file=sys.stderr)
    print(f"results: {os.path.join(cfg.output_dir, 'results.md')} and results.json")


def reading(results: list[dict]) -> str:
    """What the table's accuracies mean: which models were still learning when the budget ended."""
    rising = [r["mixer"] for r in results if (run_late_gain(r["run_dir"]) or 0.0) > STILL_LEARNING] \
        if all("run_dir" in r for r in results) else []
    what = ("late gain: validation accuracy gained over the last quarter of the steps. "
            + (f"Still learning when the budget ended (late gain > {STILL_LEARNING}): {', '.join(rising)}; the "
               f"accuracies compare how far each model got in {results[0]['steps']} steps, not where it would end."
               if rising else "Every curve had flattened (late gain <= 0.01)."))
    return what + " The matrix-mixer study (docs/results.md) compares mixers with longer runs, rates and seeds."


def read_metrics(run_dir: str) -> tuple[list[dict], list[dict]]:
    train, evals = [], []
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        for line in fh:
            rec = json.loads(line)
            (evals if "eval_loss" in rec else train).append(rec)
    return train, evals


def plot_curves(results: list[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in results))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.6 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        for r in results:
            if r["task"] != task:
                continue
            train, evals = read_metrics(r["run_dir"])
            steps = [t["step"] for t in train]
            smooth, ema = [], None
            for t in train:
                ema = t["loss"] if ema is None else 0.9 * ema + 0.1 * t["loss"]
                smooth.append(ema)
            label = f"{r['mixer']} ({r['params'] / 1e6:.2f}M)"
            row[0].plot(steps, smooth, label=label)
            row[0].plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o--", ms=3,
                        color=row[0].lines[-1].get_color(), alpha=0.7)
            row[1].plot([e["step"] for e in evals], [e["eval_accuracy"] for e in evals], "o-", ms=3, label=label)
        row[0].set(title=f"{task}: loss (train EMA; validation dashed)", xlabel="step", ylabel="cross-entropy")
        row[1].set(title=f"{task}: validation accuracy", xlabel="step", ylabel="accuracy")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate_model(model_dir: str, overrides: dict) -> dict:
    """Evaluate a saved model (run_dir/model or a checkpoint) on its task's validation data."""
    from .config import build_config
    from .loop import evaluate

    if not os.path.isdir(model_dir) or not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise UsageError(f"--model: {model_dir} is not a model directory (no config.json)")
    cfg_path = next((p for p in (os.path.join(model_dir, "train_config.json"),
                                 os.path.join(model_dir, "..", "..", "train_config.json")) if os.path.isfile(p)), None)
    if cfg_path is None:
        raise UsageError(f"--model: no train_config.json in {model_dir} or its run directory")
    with open(cfg_path) as fh:
        saved = json.load(fh)
    saved = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
    if saved.get("task") == "synthetic" and "validation_file" in overrides:
        raise UsageError("--validation-file: the synthetic tasks generate their validation data")
    saved.update(overrides)
    # the model directory has the tokenizer; the run's starting point is not needed
    # (evaluation runs whole sequences: a run trained with context parallelism is evaluated without it)
    saved.update(resume=False, init_from="", tokenizer_from="", progress=False, context_parallel=1)
    model = load_model_dir(model_dir)
    mc = model.config
    names = [mc.id2label[i] for i in range(mc.num_labels)]
    named = names != [f"LABEL_{i}" for i in range(mc.num_labels)]  # models saved before labels had names
    if saved.get("task") == "classify" and saved.get("validation_file") and named:
        saved["train_file"] = ""  # the classes come from the model: the training file is not read
    cfg = build_config({}, saved)
    d = Dist(cfg)
    model = model.to(d.device)
    tok = load_tokenizer(model_dir) if cfg.task in ("mlm", "classify") else None
    if cfg.task == "classify":
        td = classify_data(cfg, tok, label_names=names if named else None)
    else:
        td = build_task(cfg, cfg.task, tok)
    metrics = evaluate(model, td, cfg, d)
    return {"model": model_dir, "task": task_label(cfg, cfg.task), "mixer": model.config.matrix_mixer_type, **metrics}
