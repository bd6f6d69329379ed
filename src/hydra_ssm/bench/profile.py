"""Where the time goes: torch.profiler tables of the Hydra layer and of the main job's training step.

    hydra-ssm bench-profile                          # the layer at 2k and 16k, then the main job
    hydra-ssm bench-profile --target layer --lengths 2048
    hydra-ssm bench-profile --target main-job --steps 10

Two targets:

* ``layer``: one forward+backward of the Hydra layer of ``bench`` (d_model 512, defaults), batch 1,
  per length, after one untimed warm-up;
* ``main-job``: training steps (the training loop's loss, backward, clipping, AdamW) of the models that
  ``hydra-ssm train`` builds by default (width 128, 2 blocks, L = 128, batch 16), Hydra and attention with
  matched parameters, on one batch of random tokens masked as the loop masks them; tokens/s of each over
  ``--steps`` steps after warm-up, in one run.

For each, a table of the operators by self CPU time (what each op spent outside the ops it called), and
the same time gathered into kinds: matmuls, elementwise passes, copies and layout changes, reductions,
convolution, other; and the wall time not spent inside any operator (Python and dispatch between ops).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict

import torch

from hydra_ssm.bench.machine import machine_description

# operator -> kind; names as the profiler reports them (aten::<op>)
KINDS = {
    "matmul": ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "einsum", "dot", "addbmm", "mv"),
    "copy / layout": ("copy_", "contiguous", "clone", "cat", "stack", "to", "_to_copy", "empty_like", "flip",
                      "constant_pad_nd", "index", "index_put_", "index_select", "gather", "scatter", "fill_",
                      "zero_", "zeros_like", "zeros", "empty", "empty_strided", "new_empty", "new_zeros", "masked_fill_",
                      "tril", "triu", "repeat", "split_with_sizes"),
    "reduction": ("sum", "cumsum", "mean", "max", "min", "norm", "linalg_vector_norm", "amax", "argmax"),
    "convolution": ("convolution", "_convolution", "conv1d", "mkldnn_convolution", "_slow_conv2d_forward",
                    "convolution_backward", "_convolution_mode", "conv_depthwise2d"),
}
ELEMENTWISE_HINTS = ("mul", "add", "sub", "div", "exp", "log", "where", "silu", "softplus", "sigmoid", "rsqrt", "pow",
                     "neg", "clamp", "masked_fill", "addcmul", "addcdiv", "lerp", "sqrt", "gelu", "threshold",
                     "softmax", "log_softmax", "nll_loss", "_foreach", "maximum", "minimum", "abs", "sign", "tanh")


def kind_of(name: str) -> str:
    """The kind of a profiler event name (``aten::mul_`` -> elementwise)."""
    op = name.split("::", 1)[-1]
    for kind, ops in KINDS.items():
        if op in ops:
            return kind
    if any(hint in op for hint in ELEMENTWISE_HINTS):
        return "elementwise"
    return "other"


def profile_call(fn, repeats: int = 1):
    """Run ``fn`` ``repeats`` times under torch.profiler; returns (profiler, wall seconds per call)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        wall = (time.perf_counter() - start) / repeats
    return prof, wall


def summarize(prof, wall: float, repeats: int, top: int) -> str:
    """A markdown table of the ``top`` operators by self CPU time per call, and one of the kinds."""
    rows = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total_self = sum(e.self_cpu_time_total for e in rows) / 1e6 / repeats
    rows.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    lines = ["| operator | kind | calls | self time | share of wall |", "|---|---|---|---|---|"]
    for e in rows[:top]:
        t = e.self_cpu_time_total / 1e6 / repeats
        lines.append(f"| {e.key} | {kind_of(e.key)} | {e.count // repeats} | {fmt_time(t)} | {t / wall:.1%} |")
    by_kind = defaultdict(float)
    calls = defaultdict(int)
    for e in rows:
        by_kind[kind_of(e.key)] += e.self_cpu_time_total / 1e6 / repeats
        calls[kind_of(e.key)] += e.count // repeats
    lines += ["", "| kind | calls | self time | share of wall |", "|---|---|---|---|"]
    for kind, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {calls[kind]} | {fmt_time(t)} | {t / wall:.1%} |")
    outside = max(wall - total_self, 0.0)
    lines.append(f"| outside operators (Python, dispatch) | — | {fmt_time(outside)} | {outside / wall:.1%} |")
    lines.append(f"| **wall** | {sum(calls.values())} | {fmt_time(wall)} | 100% |")
    return "\n".join(lines)


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


# ---------------------------------------------------------------- the layer
def profile_layer(length: int, d_model: int, top: int) -> str:
    from hydra_ssm import Hydra

    torch.manual_seed(0)
    layer = Hydra(d_model)
    u = torch.randn(1, length, d_model)

    def step():
        layer.zero_grad(set_to_none=True)
        layer(u).sum().backward()

    step()  # warm-up
    prof, wall = profile_call(step)
    return (f"### Hydra layer, d_model {d_model}, L = {length}, batch 1: forward+backward {fmt_time(wall)}\n\n"
            + summarize(prof, wall, 1, top))


# ---------------------------------------------------------------- the main job
def main_job_models(cfg=None):
    """(cfg, task, {mixer: model}) of the default main job (``hydra-ssm train`` with no options): Hydra, then
    attention with its MLP sized to match Hydra's parameters (`mlp_widths`, as the runner sizes them). The
    task holds one batch of random token rows of the job's vocabulary and length."""
    from hydra_ssm.train.config import TrainConfig
    from hydra_ssm.train.loop import build_model, mlp_widths
    from hydra_ssm.train.tasks import TaskData

    cfg = cfg or TrainConfig()
    rows = torch.randint(5, cfg.vocab_size, (cfg.batch_size, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    task = TaskData("mlm", {"input_ids": rows}, {}, vocab_size=cfg.vocab_size, seq_len=cfg.seq_len)
    models = {}
    for mixer, width in mlp_widths(cfg, task, cfg.mixers).items():
        torch.manual_seed(cfg.seed)
        models[mixer] = build_model(cfg, task, mixer, width)
    return cfg, task, models


def train_step_fn(model, cfg, task):
    """One training step of ``model`` as the training loop runs it, on the task's first batch (masked as the loop
    masks it, once): the loop's loss (`loss_terms`), backward, clipping, AdamW."""
    from hydra_ssm.train.batching import make_batch
    from hydra_ssm.train.loop import loss_terms, param_groups

    batch = make_batch(task, "train", list(range(cfg.batch_size)), mask_prob=cfg.mask_prob,
                       gen=torch.Generator().manual_seed(cfg.seed))
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    model.train()

    def step():
        loss, _, _ = loss_terms(model, batch, task.kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

    return step


def profile_main_job(steps: int, top: int) -> str:
    cfg, task, models = main_job_models()
    fns = {mixer: train_step_fn(model, cfg, task) for mixer, model in models.items()}
    for fn in fns.values():
        for _ in range(3):  # warm-up
            fn()
    # tokens/s: the models alternate step by step, so both see the same machine
    times = defaultdict(list)
    for _ in range(steps):
        for mixer, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[mixer].append(time.perf_counter() - start)
    tokens = cfg.batch_size * cfg.seq_len
    out = [f"### The main job's training step (width {cfg.hidden_size}, {cfg.num_layers} blocks, L = {cfg.seq_len}, "
           f"batch {cfg.batch_size})\n",
           "| mixer | params | median step | tokens/s |", "|---|---|---|---|"]
    for mixer, ts in times.items():
        params = sum(p.numel() for p in models[mixer].parameters())
        out.append(f"| {mixer} | {params:,} | {fmt_time(statistics.median(ts))} | "
                   f"{tokens / statistics.median(ts):,.0f} |")
    for mixer, fn in fns.items():
        prof, wall = profile_call(fn, repeats=3)
        out += ["", f"#### {mixer}: one step {fmt_time(wall)}", "", summarize(prof, wall, 3, top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hydra-ssm bench-profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=["layer", "main-job", "all"], default="all",
                        help="what to profile (default: all)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 16384], help="layer: sequence lengths")
    parser.add_argument("--d-model", type=int, default=512, help="layer: width (default 512, as hydra-ssm bench)")
    parser.add_argument("--steps", type=int, default=20, help="main job: timed steps per model (default 20)")
    parser.add_argument("--top", type=int, default=15, help="operators listed per profile (default 15)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args(argv)
    for name in ("d_model", "steps", "top", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if any(n <= 0 for n in args.lengths):
        parser.error(f"--lengths must be positive, got {args.lengths}")
    torch.set_num_threads(args.threads)
    print(f"# hydra-ssm profile\n\nmachine: {machine_description()}\n", flush=True)
    if args.target in ("layer", "all"):
        for length in args.lengths:
            print(profile_layer(length, args.d_model, args.top) + "\n", flush=True)
    if args.target in ("main-job", "all"):
        print(profile_main_job(args.steps, args.top), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
