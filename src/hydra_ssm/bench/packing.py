"""Benchmark: packed batches (``cu_seqlens``) against padded ones, the same tokens through the same Hydra layer.

Sequence lengths are drawn log-uniformly between --min-len and --max-len (a fixed seed), the skewed
distribution of real corpora: most sequences are short, a few long ones set the padded length. The
padded batch is (n, longest, d_model) with an attention mask; the packed one is (1, total, d_model)
with the offsets. Both run forward+backward (``out.sum().backward()``) in the same process, alternately
(padded, packed, padded, ...) so that a busy neighbour slows both alike; the table gives the median
time and the valid tokens per second of each, and their ratio. Nothing here asserts.

    python -m hydra_ssm.bench.packing              # 32 sequences of 64 .. 4096 tokens, d_model 256
    hydra-ssm bench-packing --num-seqs 16 --d-model 128
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

from hydra_ssm.bench.hydra import _sync, _zero_grads, fmt_s
from hydra_ssm.bench.machine import machine_description


def log_uniform_lengths(n: int, low: int, high: int, seed: int) -> list[int]:
    """``n`` integer lengths with log(length) uniform in [log low, log high]."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return [int(round(math.exp(math.log(low) + x * (math.log(high) - math.log(low))))) for x in u.tolist()]


def batches(lengths: list[int], d_model: int, device, seed: int):
    """The same tokens as a padded batch (u (n, longest, d), mask (n, longest)) and a packed row
    (u (1, total, d), cu_seqlens (n + 1,) int32)."""
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, d_model, generator=gen) for n in lengths]
    longest = max(lengths)
    padded = torch.zeros(len(lengths), longest, d_model)
    mask = torch.zeros(len(lengths), longest, dtype=torch.bool)
    for i, s in enumerate(seqs):
        padded[i, :len(s)] = s
        mask[i, :len(s)] = True
    packed = torch.cat(seqs)[None]
    cu_seqlens = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0).to(torch.int32)
    return (padded.to(device), mask.to(device)), (packed.to(device), cu_seqlens.to(device))


def time_alternating(fns: dict, owner, device, repeats: int, budget: float) -> dict:
    """Median seconds of forward+backward of every callable in ``fns``, run in turn (one warm-up round,
    then up to ``repeats`` rounds while a round fits in ``budget``): {name: (median, runs)}."""
    def once(fn):
        _zero_grads(owner)
        _sync(device)
        start = time.perf_counter()
        fn().sum().backward()
        _sync(device)
        return time.perf_counter() - start

    warm = sum(once(fn) for fn in fns.values())
    times = {name: [] for name in fns}
    spent, last = warm, warm
    while len(times[next(iter(fns))]) < repeats and spent + last <= budget * len(fns):
        last = 0.0
        for name, fn in fns.items():
            times[name].append(once(fn))
            last += times[name][-1]
        spent += last
    return {name: (statistics.median(t), len(t)) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hydra-ssm bench-packing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-seqs", type=int, default=32, help="sequences in the batch")
    parser.add_argument("--min-len", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=64, help="Hydra chunk size (the layer default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the lengths, the inputs and the layer")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median reported)")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds per cell after which no further timed round starts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", help="write the markdown table here and a JSON copy next to it")
    args = parser.parse_args(argv)
    for name in ("num_seqs", "min_len", "max_len", "d_model", "chunk_size", "repeats", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.min_len > args.max_len:
        parser.error(f"--min-len ({args.min_len}) must be <= --max-len ({args.max_len})")
    torch.set_num_threads(args.threads)
    from hydra_ssm import Hydra

    lengths = log_uniform_lengths(args.num_seqs, args.min_len, args.max_len, args.seed)
    (padded, mask), (packed, cu_seqlens) = batches(lengths, args.d_model, args.device, args.seed)
    torch.manual_seed(args.seed)
    layer = Hydra(args.d_model, chunk_size=args.chunk_size, device=args.device)
    tokens, slots = sum(lengths), padded.shape[0] * padded.shape[1]
    machine = machine_description(args.device)
    print(f"# hydra-ssm packing benchmark\n\nmachine: {machine}\n"
          f"setup: Hydra layer, d_model {args.d_model}, layer defaults (d_state 64, headdim 64, expand 2, chunk_size "
          f"{args.chunk_size}); {args.num_seqs} sequences, lengths log-uniform in [{args.min_len}, {args.max_len}] "
          f"(seed {args.seed}): {tokens:,} tokens, longest {max(lengths):,}, padded batch {slots:,} positions "
          f"({tokens / slots:.0%} valid); forward+backward, median of {args.repeats}\n", flush=True)

    # the two layouts give the same outputs (a check of the setup, not a test)
    with torch.no_grad():
        diff = (layer(padded, attention_mask=mask)[mask] - layer(packed, cu_seqlens=cu_seqlens)[0]).abs().max()
    runs = {"padded": lambda: layer(padded, attention_mask=mask), "packed": lambda: layer(packed, cu_seqlens=cu_seqlens)}
    rows = {name: {"seconds": seconds, "runs": count, "tokens_per_s": tokens / seconds}
            for name, (seconds, count) in time_alternating(runs, layer, args.device, args.repeats,
                                                           args.budget).items()}
    gain = rows["padded"]["seconds"] / rows["packed"]["seconds"]
    lines = ["| batch | positions computed | fwd+bwd | valid tokens/s | vs padded |", "|---|---|---|---|---|"]
    for name, positions in (("padded", slots), ("packed", tokens)):
        r = rows[name]
        ratio = rows["padded"]["seconds"] / r["seconds"]
        lines.append(f"| {name} | {positions:,} | {fmt_s(r['seconds'])} | {r['tokens_per_s']:,.0f} | {ratio:.2f}x |")
    table = "\n".join(lines)
    print(table + f"\n\npacked vs padded: {gain:.2f}x tokens/s; largest output difference {float(diff):.1e}")
    if args.output:
        with open(args.output, "w") as f:
            f.write(f"machine: {machine}\n\n{table}\n")
        with open(args.output.rsplit(".", 1)[0] + ".json", "w") as f:
            json.dump({"machine": machine, "args": vars(args), "lengths": lengths, "rows": rows,
                       "max_abs_difference": float(diff)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
