"""Benchmark of context parallelism: one Hydra layer over a sequence split across 1, 2, 4 processes (gloo).

    hydra-ssm bench-context-parallel --lengths 8192 16384 --per-rank 4096

For every world size W and every total length L (and for W x ``--per-rank``: the
same length per rank), W new processes (forked from a parent that has only
imported the library, so none inherits an earlier measurement's peak) join a
gloo group; each builds the same layer and its shard (L / W positions) of one
input, runs ``--warmup`` forward + backward passes, then times ``--repeats``
more (each ends at a barrier; median of rank 0's wall times, and the sum over
the ranks of their median CPU times). Per rank it reports the peak memory the
passes needed on top of weights and input (``hydra_ssm.bench.machine.PeakMemory``:
growth of VmHWM over VmRSS on CPU; the largest over the ranks) and the bytes the
context-parallel exchanges moved per layer and pass
(``hydra_ssm.mixers.context_parallel.ExchangeLog``: forward all-gathers, backward
all-reduces, counted as the collectives' result sizes).

The exchanged volume is ``W x B x (2 halo d_model + 2 H P N + 2 H)`` numbers each way
(+ 3 W integers): it grows with the number of processes, never with L. With W = 1 the
layer's ordinary forward runs (no group, nothing exchanged).

On a machine with fewer cores than processes the processes share the cores: the
wall times then show no speed-up; the CPU time is the work of a step, and the
memory per rank is the point.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time


# ---------------------------------------------------------------------------------------------- launcher
def _gloo_worker(rank: int, world: int, init_file: str, fn, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(dist.group.WORLD, *args)
        if rank == 0:
            torch.save(result, init_file + ".result")
    finally:
        dist.destroy_process_group()


def launch_gloo(fn, world: int, *args, start_method: str = "spawn"):
    """Run ``fn(group, *args)`` in ``world`` new processes joined in one gloo group; rank 0's return value.

    ``fn`` must be importable by name (a module-level function). A failure on any rank raises
    ``torch.multiprocessing.ProcessRaisedException`` with that rank's traceback. ``start_method``:
    "spawn" (fresh interpreters: what the benchmark measures) or "fork" (children that inherit the
    imported modules: starts in a fraction of a second; POSIX only).
    """
    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="hydra-ssm-gloo-") as tmp:
        init_file = os.path.join(tmp, "init")
        mp.start_processes(_gloo_worker, args=(world, init_file, fn, args), nprocs=world, join=True,
                           start_method=start_method)
        return torch.load(init_file + ".result", weights_only=False)


# ---------------------------------------------------------------------------------------------- one measurement
def _measure(group, cfg: dict) -> dict:
    import torch
    import torch.distributed as dist

    from hydra_ssm.bench.machine import PeakMemory
    from hydra_ssm.mixers import Hydra
    from hydra_ssm.mixers.context_parallel import ExchangeLog

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    torch.manual_seed(0)
    layer = Hydra(cfg["d_model"], d_state=cfg["d_state"], headdim=cfg["headdim"], chunk_size=cfg["chunk_size"])
    lengths = [cfg["L"] // world + (r < cfg["L"] % world) for r in range(world)]
    u = torch.randn(cfg["batch"], lengths[rank], cfg["d_model"], requires_grad=True)
    kw = {"context_parallel_group": group} if world > 1 else {}

    def step():
        layer.zero_grad(set_to_none=True)
        u.grad = None
        layer(u, **kw).square().mean().backward()
        dist.barrier(group)

    peak = PeakMemory("cpu")
    times, cpu = [], []
    for i in range(cfg["warmup"] + cfg["repeats"]):
        t0, c0 = time.perf_counter(), time.process_time()
        if i == cfg["warmup"]:
            with ExchangeLog() as log:
                step()
        else:
            step()
        if i >= cfg["warmup"]:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    mine = torch.tensor([float(max(0, peak.growth())), statistics.median(cpu)], dtype=torch.float64)
    every = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    return {"world": world, "L": cfg["L"], "per_rank": max(lengths), "ms": 1e3 * statistics.median(times),
            "cpu_s": sum(float(e[1]) for e in every), "peak_mb": max(float(e[0]) for e in every) / 2**20,
            "fwd_bytes": log.forward_bytes, "bwd_bytes": log.backward_bytes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hydra-ssm bench-context-parallel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4], help="numbers of processes")
    p.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768], help="total sequence lengths")
    p.add_argument("--per-rank", type=int, default=8192, help="also: this many positions per rank (0: skip)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-state", type=int, default=64)
    p.add_argument("--headdim", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", help="also write the markdown table to this file")
    args = p.parse_args(argv)
    for name in ("d_model", "d_state", "headdim", "chunk_size", "batch", "repeats"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0 or args.per_rank < 0:
        p.error("--warmup and --per-rank must be >= 0")
    if any(w <= 0 for w in args.worlds) or any(n <= 0 for n in args.lengths):
        p.error("--worlds and --lengths must be positive")

    from hydra_ssm.bench.machine import machine_description

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    head = (f"Machine: {machine_description('cpu')}; {cores} cores available to the processes, 1 torch thread "
            f"per process (with more processes than cores they share the cores: times are not a speed-up). "
            f"One Hydra layer, d_model {args.d_model}, d_state {args.d_state}, headdim {args.headdim}, "
            f"chunk {args.chunk_size}, batch {args.batch}, float32, gloo; forward+backward per step, median of "
            f"{args.repeats} after {args.warmup} warm-up (wall time of rank 0; CPU time: the ranks' medians "
            f"summed, i.e. the work of a step, which other jobs on the machine do not inflate). Peak memory: the "
            f"largest over the ranks of what the passes needed on top of weights and input. Exchanged: per rank, "
            f"per layer and step.\n")
    columns = ["| processes | total L | L per rank | ms / step | CPU s / step, all ranks | peak MB per rank "
               "| exchanged fwd bytes | exchanged bwd bytes |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tables = [(f"Fixed total L = {n}:", [(w, n) for w in args.worlds]) for n in args.lengths]
    if args.per_rank:
        tables.append((f"Fixed L per rank = {args.per_rank}:", [(w, w * args.per_rank) for w in args.worlds]))
    importlib.import_module("hydra_ssm.mixers")  # imported once here: the forked workers inherit it

    start = "fork" if "fork" in __import__("multiprocessing").get_all_start_methods() else "spawn"
    done = {}
    text = [head]
    print(head)
    for title, plan in tables:
        lines = ["", title, "", *columns]
        print("\n".join(lines))
        sys.stdout.flush()
        for world, total in plan:
            if (world, total) not in done:  # a fresh group of processes per configuration
                cfg = dict(L=total, d_model=args.d_model, d_state=args.d_state, headdim=args.headdim,
                           chunk_size=args.chunk_size, batch=args.batch, warmup=args.warmup, repeats=args.repeats)
                done[world, total] = launch_gloo(_measure, world, cfg, start_method=start)
            r = done[world, total]
            row = (f"| {r['world']} | {r['L']} | {r['per_rank']} | {r['ms']:.0f} | {r['cpu_s']:.2f} | "
                   f"{r['peak_mb']:.0f} | {r['fwd_bytes']:,} | {r['bwd_bytes']:,} |")
            lines.append(row)
            print(row)
            sys.stdout.flush()
        text += lines
    if args.output:
        with open(args.output, "w") as fh:
            fh.write("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
