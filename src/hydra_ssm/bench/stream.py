"""Benchmark: working memory of ``Hydra.stream`` against ``forward`` as the sequence grows.

    hydra-ssm bench-stream                     # L = 2^14 .. 2^20, d_model 256 (a few minutes on 2 cores)
    hydra-ssm bench-stream --max-log2 22       # up to L = 2^22 (4 GiB of input, 4 GiB of output)
    hydra-ssm bench-stream --d-model 64 --d-state 16 --headdim 16 --forward-max-log2 20   # forward at 2^20 too

Prints a markdown table. Every run is a fresh process on one Hydra layer
(seeded init, batch 1 by default). The input, a (B, L, d_model) float32 file of
N(0, 1) values, and the outputs are files in a temporary directory (deleted
afterwards), mapped into memory with ``torch.from_file(path, shared=True)``:
at L = 2^22 and d_model 256 each is 4 GiB, so they could not fit in the budget
being measured, and a file-backed page is not working memory.

Working memory: the growth of the worker's anonymous resident memory (RssAnon
in /proc/PID/status: heap and anonymous mappings, never pages of a mapped
file) from just before the call to its highest value, polled by this process
every millisecond while the worker runs. Polling can miss a peak that lasts
less than a millisecond; the largest tensors (a segment's projections) live
far longer. ``forward`` reads its input from the file into memory before the
measurement starts, and its output is counted (it is part of what forward
needs). Its growth is also measured exactly, from the worker's peak resident
size (VmHWM, as ``hydra-ssm bench``): the two columns check the polling.

The stream's output is compared with forward's at every length where forward
runs (``--forward-max-log2``): the largest absolute difference, and the largest
absolute output for scale. Benchmarks never assert.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from hydra_ssm.bench.machine import PeakMemory, _proc_status_bytes, machine_description

ROWS_PER_CHUNK = 1 << 16  # rows of the (B, L, d_model) files written or compared at a time


def build_layer(spec: dict):
    from hydra_ssm import Hydra

    torch.manual_seed(spec["seed"])
    return Hydra(spec["d_model"], d_state=spec["d_state"], headdim=spec["headdim"], chunk_size=spec["chunk_size"]).eval()


def mapped(path: str, spec: dict) -> torch.Tensor:
    """The (B, L, d_model) float32 file at ``path``, mapped (created when missing)."""
    shape = (spec["batch"], spec["length"], spec["d_model"])
    return torch.from_file(path, shared=True, size=shape[0] * shape[1] * shape[2]).view(shape)


def write_input(path: str, spec: dict) -> None:
    """N(0, 1) values, seeded, written a chunk at a time."""
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    with open(path, "wb") as f:
        for _ in range(spec["batch"]):
            for start in range(0, spec["length"], ROWS_PER_CHUNK):
                rows = min(ROWS_PER_CHUNK, spec["length"] - start)
                f.write(torch.randn(rows, spec["d_model"], generator=gen).numpy().tobytes())


def worker(spec: dict) -> dict:
    """One measured call in this (fresh) process: the stream from and into mapped files, or forward."""
    torch.set_num_threads(spec["threads"])
    layer = build_layer(spec)
    u = mapped(spec["input"], spec)
    out = mapped(spec["output"], spec)
    if spec["kind"] == "forward":
        u = u.clone()  # forward holds its input in memory
    peak = PeakMemory("cpu")
    base = _proc_status_bytes("RssAnon")
    start = time.perf_counter()
    with torch.no_grad():
        if spec["kind"] == "stream":
            layer.stream(u, spec["segment_len"], out=out)
        else:
            y = layer(u)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "base_anon": base, "hwm_growth": peak.growth()}
    if spec["kind"] == "forward":
        out.copy_(y)
    return result


def run_worker(spec: dict, poll_seconds: float = 0.001) -> dict:
    """``worker(spec)`` in a fresh process whose RssAnon is polled; adds ``anon_growth`` (bytes)."""
    code = ("import json, sys; from hydra_ssm.bench.stream import worker; "
            "print('RESULT', json.dumps(worker(json.loads(sys.argv[1]))))")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    status = f"/proc/{proc.pid}/status"
    highest = 0
    while proc.poll() is None:
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        highest = max(highest, int(line.split()[1]) * 1024)
                        break
        except (FileNotFoundError, ProcessLookupError, ValueError):
            break
        time.sleep(poll_seconds)
    stdout, stderr = proc.communicate()
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["anon_growth"] = max(0, highest - result["base_anon"])
            return result
    return {"error": (stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:200]}


def compare(path_a: str, path_b: str, spec: dict) -> tuple[float, float]:
    """(max |a - b|, max |b|) over two mapped files, a chunk of rows at a time."""
    a, b = mapped(path_a, spec), mapped(path_b, spec)
    diff = scale = 0.0
    for start in range(0, spec["length"], ROWS_PER_CHUNK):
        part_a, part_b = a[:, start:start + ROWS_PER_CHUNK], b[:, start:start + ROWS_PER_CHUNK]
        diff = max(diff, (part_a - part_b).abs().max().item())
        scale = max(scale, part_b.abs().max().item())
    return diff, scale


def state_bytes(spec: dict) -> int:
    """The entering states kept between the passes: two (B, H, P, N) float32 states per segment."""
    nheads = 2 * spec["d_model"] // spec["headdim"]
    segments = -(-spec["length"] // spec["segment_len"])
    return segments * 2 * spec["batch"] * nheads * spec["headdim"] * spec["d_state"] * 4


def fmt_mb(x):
    if x is None:
        return "—"
    if x < 2**20:
        return f"{x / 2**10:.0f} KB"
    return f"{x / 2**20:.1f} MB" if x < 10 * 2**20 else f"{x / 2**20:.0f} MB" if x < 2**30 else f"{x / 2**30:.2f} GB"


def fmt_s(x):
    return "—" if x is None else (f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s")


def length_label(n: int) -> str:
    exponent = n.bit_length() - 1
    return f"2^{exponent}" if n == 1 << exponent else str(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hydra-ssm bench-stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-log2", type=int, default=20, help="rows L = 2^14, 2^16, ..., 2^N (default 20)")
    parser.add_argument("--lengths", type=int, nargs="+", help="explicit lengths instead of --max-log2")
    parser.add_argument("--forward-max-log2", type=int, default=16,
                        help="run forward (and compare) for L <= 2^N only (default 16: forward's memory grows with L)")
    parser.add_argument("--segment-len", type=int, default=1 << 15)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=64)
    parser.add_argument("--headdim", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dir", help="where the temporary input and output files go (default: the system's "
                                      "temporary directory); removed afterwards")
    parser.add_argument("--output", help="also write the markdown table (with the machine line) to this file")
    args = parser.parse_args(argv)
    for name in ("segment_len", "d_model", "d_state", "headdim", "chunk_size", "batch", "threads", "max_log2"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.max_log2 > 40 or args.forward_max_log2 > 40:
        parser.error("--max-log2 and --forward-max-log2 must be at most 40")
    lengths = args.lengths or [1 << n for n in range(14, args.max_log2 + 1, 2)]
    if any(n <= 0 for n in lengths):
        parser.error("--lengths must be positive")
    if (2 * args.d_model) % args.headdim:
        parser.error(f"--headdim ({args.headdim}) must divide 2 * d_model ({2 * args.d_model})")
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir!r} is not a directory")

    torch.set_num_threads(args.threads)  # the workers' setting, as the machine line reports it
    machine = machine_description()
    setup = (f"Hydra layer d_model {args.d_model}, d_state {args.d_state}, headdim {args.headdim}, expand 2, "
             f"chunk_size {args.chunk_size}; batch {args.batch}; float32; segment_len {args.segment_len}; "
             f"{args.threads} torch thread(s)")
    print(f"# Hydra.stream: working memory against L\n\nmachine: {machine}\nsetup: {setup}\n", flush=True)
    header = ("| L | segment_len | stream working memory | entering states (in it) | forward working memory "
              "(polled / VmHWM, output included) | max abs diff to forward (max abs output) | stream time | "
              "stream tokens/s | forward time |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    workdir = tempfile.mkdtemp(prefix="hydra-bench-stream-", dir=args.dir)
    try:
        for length in lengths:
            spec = dict(length=length, segment_len=args.segment_len, d_model=args.d_model, d_state=args.d_state,
                        headdim=args.headdim, chunk_size=args.chunk_size, batch=args.batch, threads=args.threads,
                        seed=0, input=os.path.join(workdir, "input.bin"))
            write_input(spec["input"], spec)
            stream_out = os.path.join(workdir, "stream.bin")
            streamed = run_worker(dict(spec, kind="stream", output=stream_out))
            forward, diff = None, None
            if length <= 1 << args.forward_max_log2:
                forward_out = os.path.join(workdir, "forward.bin")
                forward = run_worker(dict(spec, kind="forward", output=forward_out))
                if "error" not in forward and "error" not in streamed:
                    diff = compare(stream_out, forward_out, spec)
                os.remove(forward_out)
            for name, r in (("stream", streamed), ("forward", forward)):
                if r is not None and "error" in r:
                    print(f"  L={length} {name} failed: {r['error']}", file=sys.stderr, flush=True)
            ok = "error" not in streamed
            tokens = args.batch * length
            cells = [
                length_label(length), str(args.segment_len),
                fmt_mb(streamed["anon_growth"]) if ok else "failed", fmt_mb(state_bytes(spec)),
                "—" if forward is None else ("failed" if "error" in forward else
                                             f"{fmt_mb(forward['anon_growth'])} / {fmt_mb(forward['hwm_growth'])}"),
                "—" if diff is None else f"{diff[0]:.2e} ({diff[1]:.2f})",
                fmt_s(streamed["seconds"]) if ok else "—",
                f"{tokens / streamed['seconds']:,.0f}" if ok else "—",
                "—" if forward is None or "error" in forward else fmt_s(forward["seconds"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
            for path in (spec["input"], stream_out):
                if os.path.exists(path):
                    os.remove(path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(f"machine: {machine}\nsetup: {setup}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
