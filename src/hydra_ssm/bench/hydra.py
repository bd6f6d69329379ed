"""Benchmark: the Hydra layer against multi-head attention, fused against two-pass.

Prints a markdown table (and optionally writes it with a JSON copy). Nothing
here asserts: it measures, inside one run, so ratios are comparable.

    python -m hydra_ssm.bench.hydra                # the full table (about 15 minutes on 2 cores)
    python -m hydra_ssm.bench.hydra --quick        # L = 1k, 2k only

Protocol: warm-up, then the median of several runs (fewer for runs that take
long, see --budget); forward is timed under ``torch.no_grad()``, forward+backward
with ``out.sum().backward()``. Peak memory of forward+backward is measured in a
fresh subprocess per cell as the growth of peak resident memory, VmHWM - VmRSS before the call (CPU), or
``torch.cuda.max_memory_allocated`` (CUDA). FLOPs are counted with
``torch.utils.flop_counter`` (matmul-like ops only, recomputation included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from hydra_ssm.bench.machine import PeakMemory, machine_description


# ---------------------------------------------------------------- what is measured
def build(kind: str, d_model: int, length: int, batch: int, device, chunk_size: int, seed: int = 0):
    """Return (callable taking requires_grad flag -> output tensor, description)."""
    from hydra_ssm import Hydra, MultiHeadAttention
    from hydra_ssm.ops import quasiseparable_chunked, quasiseparable_two_pass

    torch.manual_seed(seed)
    if kind in ("hydra", "hydra_two_pass"):
        layer = Hydra(d_model, chunk_size=chunk_size, device=device,
                      scan_impl="fused" if kind == "hydra" else "two_pass")
        u = torch.randn(batch, length, d_model, device=device)
        return lambda: layer(u), layer
    if kind == "mha":
        layer = MultiHeadAttention(d_model, num_heads=8, device=device)
        u = torch.randn(batch, length, d_model, device=device)
        return lambda: layer(u), layer
    if kind in ("fused", "two_pass"):
        # the scan core at the shapes the Hydra layer of this width uses
        h, p, n, g = 2 * d_model // 64, 64, 64, 1
        gen = torch.Generator(device="cpu").manual_seed(seed)

        def rnd(*shape, scale=1.0):
            return (torch.randn(*shape, generator=gen) * scale).to(device).requires_grad_()

        x = rnd(batch, length, h, p)
        dts = [(torch.rand(batch, length, h, generator=gen) * 0.1).to(device).requires_grad_() for _ in range(2)]
        A = (-torch.rand(h, generator=gen) - 0.5).to(device).requires_grad_()
        Bf, Cf, Bb, Cb = (rnd(batch, length, g, n, scale=0.1) for _ in range(4))
        D = rnd(batch, length, h)
        fn = quasiseparable_chunked if kind == "fused" else quasiseparable_two_pass
        params = [x, *dts, A, Bf, Cf, Bb, Cb, D]
        return (lambda: fn(x, dts[0], dts[1], A, Bf, Cf, Bb, Cb, D, chunk_size=chunk_size)), params
    raise ValueError(f"unknown benchmark kind {kind!r}")


def _zero_grads(owner):
    params = owner.parameters() if isinstance(owner, torch.nn.Module) else owner
    for p in params:
        p.grad = None


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, owner, backward: bool, device, repeats: int, budget: float) -> tuple[float, int]:
    """Median seconds of ``repeats`` runs after one warm-up; stops early past ``budget`` seconds."""
    def once():
        _zero_grads(owner)
        _sync(device)
        start = time.perf_counter()
        if backward:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()
        _sync(device)
        return time.perf_counter() - start

    warm = once()
    times, spent = [], warm
    while len(times) < repeats and (not times or spent + times[-1] <= budget):
        times.append(once())
        spent += times[-1]
    return statistics.median(times), len(times)


def count_flops(fn, owner, backward: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    _zero_grads(owner)
    with FlopCounterMode(display=False) as counter:
        if backward:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()
    return float(counter.get_total_flops())


def matmul_gflops(device, size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def peak_memory_worker(spec: dict) -> int:
    """Run one forward+backward; return the growth of peak memory in bytes (`PeakMemory`)."""
    torch.set_num_threads(spec["threads"])
    fn, owner = build(spec["kind"], spec["d_model"], spec["length"], spec["batch"], spec["device"], spec["chunk_size"])
    peak = PeakMemory(spec["device"])
    fn().sum().backward()
    return peak.growth()


def peak_memory(spec: dict) -> int | None:
    code = ("import json, sys; from hydra_ssm.bench.hydra import peak_memory_worker; "
            "print('PEAK', peak_memory_worker(json.loads(sys.argv[1])))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK "):
            return int(line.split()[1])
    sys.stderr.write(f"memory measurement failed for {spec}: {proc.stderr[-500:]}\n")
    return None


# ---------------------------------------------------------------- table
def fmt_s(x):
    return "—" if x is None else (f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s")


def fmt_mb(x):
    return "—" if x is None else (f"{x / 2**20:.0f} MB" if x < 2**30 else f"{x / 2**30:.2f} GB")


def fmt_ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hydra-ssm bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 16384, 32768],
                        help="sequence lengths measured for every column")
    parser.add_argument("--hydra-only-lengths", type=int, nargs="*", default=[65536, 131072],
                        help="longer lengths measured for the Hydra layer alone")
    parser.add_argument("--quick", action="store_true", help="L = 1k and 2k only (a one-minute demo)")
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=64, help="Hydra chunk size (the layer default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median reported)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per cell after which no further timed run starts")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", help="write the markdown table here and a JSON copy next to it")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.hydra_only_lengths = [1024, 2048], []
    for name in ("d_model", "batch", "chunk_size", "repeats", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if any(n <= 0 for n in args.lengths + args.hydra_only_lengths):
        parser.error("lengths must be positive")
    torch.set_num_threads(args.threads)

    machine = machine_description(args.device)
    mm = matmul_gflops(args.device)
    print(f"# hydra-ssm benchmark\n\nmachine: {machine}\nplain 2048^3 matmul: {mm:.0f} GFLOP/s\n"
          f"setup: batch {args.batch}, d_model {args.d_model}, Hydra defaults (d_state 64, headdim 64, "
          f"expand 2, chunk_size {args.chunk_size}); attention: 8 heads, qkv/out projections, SDPA\n", flush=True)

    rows = []
    for length in args.lengths + args.hydra_only_lengths:
        full = length in args.lengths
        kinds = ["hydra", "mha", "fused", "two_pass"] if full else ["hydra"]
        row = {"L": length}
        for kind in kinds:
            fn, owner = build(kind, args.d_model, length, args.batch, args.device, args.chunk_size)
            if kind != "fused" and kind != "two_pass":
                row[f"{kind}_fwd"], _ = time_call(fn, owner, False, args.device, args.repeats, args.budget)
            row[f"{kind}_fwdbwd"], row[f"{kind}_runs"] = time_call(fn, owner, True, args.device, args.repeats,
                                                                   args.budget)
            if kind in ("hydra", "fused"):
                row[f"{kind}_gflop"] = count_flops(fn, owner, True) / 1e9
            del fn, owner
            if not args.no_memory and kind in ("hydra", "mha"):
                row[f"{kind}_peak"] = peak_memory(dict(kind=kind, d_model=args.d_model, length=length,
                                                       batch=args.batch, device=args.device,
                                                       chunk_size=args.chunk_size, threads=args.threads))
            print(f"  L={length} {kind}: fwd+bwd {fmt_s(row[f'{kind}_fwdbwd'])}", file=sys.stderr, flush=True)
        row["matmul_gflops"] = matmul_gflops(args.device)
        rows.append(row)

    header = ("| L | Hydra fwd | Hydra fwd+bwd | Hydra peak | MHA fwd | MHA fwd+bwd | MHA peak | Hydra vs MHA "
              "(fwd+bwd) | fused scan fwd+bwd | two-pass fwd+bwd | fused vs two-pass | scan GFLOP/s | "
              "matmul GFLOP/s | scan / matmul |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        scan = r["fused_gflop"] / r["fused_fwdbwd"] if "fused_fwdbwd" in r else None
        lines.append("| " + " | ".join([
            f"{r['L'] // 1024}k" if r["L"] % 1024 == 0 else str(r["L"]),
            fmt_s(r.get("hydra_fwd")), fmt_s(r.get("hydra_fwdbwd")), fmt_mb(r.get("hydra_peak")),
            fmt_s(r.get("mha_fwd")), fmt_s(r.get("mha_fwdbwd")), fmt_mb(r.get("mha_peak")),
            fmt_ratio(r.get("mha_fwdbwd"), r.get("hydra_fwdbwd")),
            fmt_s(r.get("fused_fwdbwd")), fmt_s(r.get("two_pass_fwdbwd")),
            fmt_ratio(r.get("two_pass_fwdbwd"), r.get("fused_fwdbwd")),
            "—" if scan is None else f"{scan:.0f}", f"{r['matmul_gflops']:.0f}",
            "—" if scan is None else f"{scan / r['matmul_gflops']:.0%}",
        ]) + " |")
    table = "\n".join(lines)
    print(table)
    by_len = {r["L"]: r for r in rows}
    if 16384 in by_len and 65536 in by_len:
        print(f"\nHydra fwd+bwd time(64k) / time(16k) = "
              f"{by_len[65536]['hydra_fwdbwd'] / by_len[16384]['hydra_fwdbwd']:.2f}")
    if args.output:
        with open(args.output, "w") as f:
            f.write(f"machine: {machine}\n\n{table}\n")
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            json.dump({"machine": machine, "args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
