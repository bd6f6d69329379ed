"""Benchmark of the matrix-mixer family: forward+backward time and peak memory.

    python -m hydra_ssm.bench.mixers --lengths 1024 4096 16384

prints a markdown table. For every (type, form, L) one fresh subprocess
builds the layer (d_model 256, batch 1 by default) and an input, runs
``warmup`` forward+backward passes, then times ``repeats`` more and reports the
median. Peak memory is measured as in ``hydra_ssm.bench.hydra`` (``PeakMemory``):
the growth of the worker's peak resident size (VmHWM) over its resident size
just before the first pass on CPU, of ``torch.cuda.max_memory_allocated`` over
the allocation before the passes on CUDA; i.e. the extra memory the passes
needed on top of weights and input. (Each worker is a fresh process so that
earlier configurations cannot hide a later peak.)

Configurations whose single pass exceeds ``--max-seconds`` stop after fewer
repeats (the table reports how many). Benchmarks never assert.

Workers run with ``OMP_WAIT_POLICY=PASSIVE`` unless ``--omp-wait-policy``
says otherwise (or the variable is already set): on a machine shared with
other jobs, OpenMP's default of spinning at every barrier lets one of the
workers' threads hold a core while its sibling waits to be scheduled, which
made every ATen op cost a scheduler time slice and slowed multi-threaded
runs by 5-50x (e.g. 79 s instead of 1.9 s for one Cauchy pass at L = 4096).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_TYPES = ["dense", "toeplitz", "vandermonde", "cauchy", "low_rank", "attention", "quasiseparable",
                 "semiseparable", "bi_gla", "bi_deltanet", "bi_complex", "hydra"]

COMPLEXITY = {
    # type: (time, memory, direction)
    "dense": ("O(L^2)", "O(L^2)", "bidirectional"),
    "toeplitz": ("O(L log L)", "O(L)", "bidirectional"),
    "vandermonde": ("DFT: O(L log L); else O(L^2)", "O(L)", "bidirectional"),
    "cauchy": ("O(L^2)", "O(L)", "bidirectional"),
    "low_rank": ("O(L)", "O(L)", "bidirectional"),
    "attention": ("O(L^2)", "O(L) (fused SDPA)", "bidirectional"),
    "quasiseparable": ("O(L)", "O(L)", "bidirectional"),
    "semiseparable": ("O(L)", "O(L)", "causal"),
    "bi_gla": ("O(L)", "O(L)", "bidirectional"),
    "bi_deltanet": ("O(L)", "O(L)", "bidirectional"),
    "bi_complex": ("O(L)", "O(L)", "bidirectional"),
    "hydra": ("O(L)", "O(L)", "bidirectional"),
}


def _worker(cfg: dict) -> dict:
    import torch

    from hydra_ssm.bench.machine import PeakMemory
    from hydra_ssm.mixers import MatrixMixer, build_mixer

    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"]) if cfg["threads"] else None
    device = torch.device(cfg["device"])
    L = cfg["L"]
    if cfg["type"] == "hydra":  # the Hydra layer (not a matrix class), at its defaults but the head size
        m = build_mixer("hydra", cfg["d_model"], headdim=cfg["headdim"], device=device, **cfg["options"])
    else:
        m = MatrixMixer(cfg["type"], cfg["dd"], cfg["d_model"], cfg["qk_dim"], max_seq_len=L, headdim=cfg["headdim"],
                        device=device, **cfg["options"])
    u = torch.randn(cfg["batch"], L, cfg["d_model"], device=device, requires_grad=True)

    def step():
        m.zero_grad(set_to_none=True)
        u.grad = None
        m(u).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    peak = PeakMemory(device)
    times = []
    for i in range(cfg["warmup"] + cfg["repeats"]):
        t0 = time.perf_counter()
        step()
        dt = time.perf_counter() - t0
        if i >= cfg["warmup"]:
            times.append(dt)
        if dt > cfg["max_seconds"] and (i + 1 >= cfg["warmup"] + 1):
            break
    if not times:
        times.append(dt)
    return {"ms": 1e3 * statistics.median(times), "runs": len(times), "peak_mb": max(0, peak.growth()) / 2**20}


def _run_one(cfg: dict, timeout: float, env: dict | None = None) -> dict:
    code = "import json,sys; from hydra_ssm.bench.mixers import _worker; print('RESULT', json.dumps(_worker(json.loads(sys.argv[1]))))"
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": err[:80]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hydra_ssm.bench.mixers", description=__doc__.split("\n\n")[0])
    p.add_argument("--types", nargs="+", default=DEFAULT_TYPES,
                   help="mixers: NAME or NAME:key=value,key=value (the class's options, e.g. "
                        "bi_deltanet:num_householder=2); 'hydra' is the Hydra layer")
    p.add_argument("--forms", nargs="+", choices=["di", "sam"], default=["di", "sam"])
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--headdim", type=int, default=128)
    p.add_argument("--qk-dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="stop repeating a configuration once one pass takes longer than this")
    p.add_argument("--timeout", type=float, default=900.0, help="per configuration, seconds")
    p.add_argument("--dense-max-len", type=int, default=4096, help="skip dense above this length (L^2 parameters)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--omp-wait-policy", default="PASSIVE",
                   help="OMP_WAIT_POLICY of the workers unless already set ('' keeps the OpenMP default)")
    args = p.parse_args(argv)
    env = dict(os.environ)
    if args.omp_wait_policy and "OMP_WAIT_POLICY" not in env:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy

    from hydra_ssm._checks import check_options
    from hydra_ssm.bench.state_tracking import Variant
    from hydra_ssm.mixers import get_mixer_class
    from hydra_ssm.mixers.registry import accepted_options
    from hydra_ssm.train.config import UsageError

    try:  # every variant's mixer and options are checked before any run
        variants = [Variant(text) for text in args.types]
        for variant in variants:
            check_options(f"the {variant.mixer!r} mixer", variant.options, accepted_options(get_mixer_class(variant.mixer)))
    except (UsageError, ValueError) as err:
        p.error(f"--types: {err}")

    from hydra_ssm.bench.machine import machine_description

    print(f"Machine: {machine_description(args.device)}; device {args.device}; d_model {args.d_model}, headdim {args.headdim}, "
          f"qk_dim {args.qk_dim}, batch {args.batch}; forward+backward, median of up to {args.repeats} runs after "
          f"{args.warmup} warm-up; peak = extra memory over weights and input; threads "
          f"{args.threads or 'default'}, OMP_WAIT_POLICY {env.get('OMP_WAIT_POLICY', 'default')}.\n")
    header = "| type | form | time | memory | direction |" + "".join(f" L={L}: ms / MB |" for L in args.lengths)
    print(header)
    print("|" + "---|" * (5 + len(args.lengths)))
    sys.stdout.flush()
    for variant in variants:
        t = variant.mixer
        cls = get_mixer_class(t)
        for form in args.forms:
            if form not in getattr(cls, "forms", ()):
                continue
            tc, mc, direction = COMPLEXITY.get(t, ("?", "?", "?"))
            if t == "vandermonde":
                tc = "O(L log L) (DFT)" if form == "di" else "O(L^2)"
            cells = []
            for L in args.lengths:
                if t == "dense" and L > args.dense_max_len:
                    cells.append("skipped (L^2 params)")
                    continue
                cfg = dict(type=t, options=variant.options, dd=form == "sam", L=L, d_model=args.d_model, headdim=args.headdim,
                           qk_dim=args.qk_dim, batch=args.batch, warmup=args.warmup, repeats=args.repeats,
                           max_seconds=args.max_seconds, device=args.device, threads=args.threads)
                r = _run_one(cfg, args.timeout, env)
                if "error" in r:
                    cells.append(f"error: {r['error']}")
                else:
                    runs = "" if r["runs"] == args.repeats else f" (n={r['runs']})"
                    cells.append(f"{r['ms']:.0f} / {r['peak_mb']:.0f}{runs}")
            print(f"| {variant.text} | {form.upper()} | {tc} | {mc} | {direction} |" + "".join(f" {c} |" for c in cells))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
