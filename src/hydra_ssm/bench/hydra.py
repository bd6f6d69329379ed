"""Benchmark: the Hydra layer against multi-head attention; its fused scan against the two-pass form and a peer.

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

The peer column (CPU table) computes the same mixer as two passes of transformers' pure-PyTorch
Mamba-2 scan (``mamba2_chunk_scan``, what its Mamba-2 models run without mamba_ssm), shifted and
added as in ``quasiseparable_two_pass``, at the fastest of ``PEER_CHUNKS`` for each length (one timed
run each); it needs the ``hf`` extra and is left out without it.
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
    if kind in ("fused", "two_pass", "peer"):
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
        fn = {"fused": quasiseparable_chunked, "two_pass": quasiseparable_two_pass, "peer": peer_two_pass}[kind]
        params = [x, *dts, A, Bf, Cf, Bb, Cb, D]
        return (lambda: fn(x, dts[0], dts[1], A, Bf, Cf, Bb, Cb, D, chunk_size=chunk_size)), params
    raise ValueError(f"unknown benchmark kind {kind!r}")


# ---------------------------------------------------------------- the peer: transformers' pure-PyTorch Mamba-2 scan
PEER_CHUNKS = (64, 128, 256, 512)  # the chunk sizes tried for the peer; each length keeps its fastest


def load_peer_scan():
    """transformers' pure-PyTorch chunked Mamba-2 scan (``mamba2_chunk_scan``, what its Mamba-2 models run
    without mamba_ssm), unwrapped from the decorator that would route it to other packages' kernels; raises
    ImportError when transformers (the ``hf`` extra) is missing or has no such function."""
    import inspect

    from transformers.models.mamba2 import modeling_mamba2

    scan = getattr(modeling_mamba2, "mamba2_chunk_scan", None)
    if scan is None:
        raise ImportError(f"transformers {modeling_mamba2.__name__} has no mamba2_chunk_scan")
    return inspect.unwrap(scan)


def peer_two_pass(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=None, chunk_size: int = 256):
    """Hydra's mixer as two passes of the peer's causal scan: one on x, one on the flipped x, shifted and
    added, plus D x (``combine_directions``); same arguments as ``quasiseparable_chunked``."""
    from hydra_ssm.ops.bidirectional import combine_directions

    scan = load_peer_scan()
    y_fwd = scan(x, dt_fwd, A, B_fwd, C_fwd, chunk_size)
    y_bwd = scan(x.flip(1), dt_bwd.flip(1), A, B_bwd.flip(1), C_bwd.flip(1), chunk_size)
    return combine_directions(y_fwd, y_bwd, x, D)


def fastest_peer_chunk(d_model: int, length: int, batch: int, device) -> int:
    """The chunk size of PEER_CHUNKS (up to the length) with the shortest forward+backward, one timed run each."""
    candidates = [q for q in PEER_CHUNKS if q <= max(length, PEER_CHUNKS[0])]
    times = {}
    for n, q in enumerate(candidates):
        fn, owner = build("peer", d_model, length, batch, device, q)
        times[q], _ = time_call(fn, owner, True, device, repeats=1, budget=0.0, warmup=int(n == 0))
    return min(times, key=times.get)


def _zero_grads(owner):
    params = owner.parameters() if isinstance(owner, torch.nn.Module) else owner
    for p in params:
        p.grad = None


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, owner, backward: bool, device, repeats: int, budget: float, warmup: int = 1) -> tuple[float, int]:
    """Median seconds of ``repeats`` runs after ``warmup`` untimed ones; stops early past ``budget`` seconds."""
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

    spent = sum(once() for _ in range(warmup))
    times = []
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


def matmul_gflops(device, size: int = 2048, repeats: int = 5, dtype=torch.float32) -> float:
    """GFLOP/s of a plain size^3 matmul in ``dtype`` (median of ``repeats`` after one warm-up)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
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


# ---------------------------------------------------------------- the CUDA table: Hydra's scan against its peers
GPU_LENGTHS = [512, 1024, 2048, 4096, 8192, 16384]
FLOP_CHUNK = 64  # the chunk of the useful-FLOP count, whatever chunk a row runs with
MAMBA_CHUNK = 256  # mamba_chunk_scan_combined's usual chunk (Mamba2's default)
# --rows name -> the row's label; all but sdpa compute Hydra's scan
GPU_ROWS = {"triton": "triton", "eager": "torch eager", "compile": "torch compile",
            "mamba": "mamba_ssm two-pass", "fla": "fla two-pass", "sdpa": "sdpa"}


class RowUnavailable(Exception):
    """A row that cannot run here (a package or an argument is missing); its message fills the row's cells."""


def hydra_scan_flops(batch: int, length: int, heads: int, headdim: int, dstate: int, chunk: int,
                     backward: bool) -> int:
    """Useful FLOPs of Hydra's chunked scan, both directions, forward (or forward+backward with ``backward``).

    Counted from the matmuls of the chunked algorithm, 2 m k n for an (m x k) by (k x n) product, per chunk
    of q positions (q = chunk; a last, shorter chunk counts with its own q) and per head, with N = dstate and
    P = headdim:

    - the C B^T block of each direction: 2 * (2 q q N);
    - the Q x Q block (both triangles) times x: 2 q q P;
    - the state each chunk hands on, B^T (decayed x), per direction: 2 * (2 q N P);
    - the readout of the state entering the chunk, C (decayed) H, per direction: 2 * (2 q N P).

    Elementwise work (decays, dt, D x) is not counted. The backward counts as twice the forward, so
    ``backward=True`` gives three times the forward. Every row that computes Hydra's scan is credited this
    same count (with ``chunk`` = 64, whatever its own chunking or recomputation), so rates compare as times do.
    """
    def per_chunk(q):
        return 2 * 2 * q * q * dstate + 2 * q * q * headdim + 2 * 2 * q * dstate * headdim \
            + 2 * 2 * q * dstate * headdim

    full, rest = divmod(length, chunk)
    forward = batch * heads * (full * per_chunk(chunk) + (per_chunk(rest) if rest else 0))
    return 3 * forward if backward else forward


def attention_flops(batch: int, length: int, heads: int, headdim: int, backward: bool) -> int:
    """Useful FLOPs of non-causal attention, the usual count: Q K^T and P V, 4 B H L^2 P forward; the backward
    counts 2.5 times the forward (five L x L matmuls to two), so ``backward=True`` gives 3.5 times the forward."""
    forward = 4 * batch * heads * length * length * headdim
    return forward * 7 // 2 if backward else forward


class ScanInputs:
    """Random inputs of Hydra's scan at one layer's shapes, all requiring grad (in call order of
    ``quasiseparable_chunked``): x (B, L, H, P), dt_fwd, dt_bwd (B, L, H), A (H,), B_fwd, C_fwd, B_bwd,
    C_bwd (B, L, G, N), D (B, L, H).

    x, B, C and D are in ``dtype`` (what the layer's projections give); dt and A in float32, as the layer
    forms softplus(dt + dt_bias) and -exp(A_log).
    """

    def __init__(self, batch, length, heads, headdim, dstate, ngroups, dtype, device, seed=0):
        gen = torch.Generator(device=device).manual_seed(seed)

        def rnd(shape, scale=1.0, dt=dtype):
            return (torch.randn(shape, generator=gen, device=device) * scale).to(dt).requires_grad_()

        def step_sizes():  # in (0.001, 0.1), the layer's initial range
            return (torch.rand(batch, length, heads, generator=gen, device=device) * 0.099 + 0.001).requires_grad_()

        self.x = rnd((batch, length, heads, headdim))
        self.dt_fwd, self.dt_bwd = step_sizes(), step_sizes()
        self.A = (-0.5 - torch.rand(heads, generator=gen, device=device)).requires_grad_()
        self.B_fwd, self.C_fwd, self.B_bwd, self.C_bwd = (rnd((batch, length, ngroups, dstate), 0.1) for _ in range(4))
        self.D = rnd((batch, length, heads))

    def tensors(self) -> list:
        return [self.x, self.dt_fwd, self.dt_bwd, self.A, self.B_fwd, self.C_fwd, self.B_bwd, self.C_bwd, self.D]


def _scan_backend(backend: str) -> dict:
    """The ``backend=`` keyword for quasiseparable_chunked, or {} for the torch path of a build without it."""
    import inspect

    from hydra_ssm.ops import quasiseparable_chunked

    if "backend" in inspect.signature(quasiseparable_chunked).parameters:
        return {"backend": backend}
    if backend == "torch":
        return {}  # this build has only the torch path
    raise RowUnavailable("unavailable: quasiseparable_chunked has no backend argument in this build")


def _load_mamba_scan():
    """mamba_ssm's ``mamba_chunk_scan_combined`` (its Triton kernels only; benchmarking, not a dependency)."""
    import importlib.util
    import types

    if importlib.util.find_spec("mamba_ssm") is None:
        raise RowUnavailable("not installed (mamba_ssm)")
    if "selective_scan_cuda" not in sys.modules and importlib.util.find_spec("selective_scan_cuda") is None:
        # mamba_ssm's package __init__ imports its compiled selective scan, which the SSD Triton kernels never call
        sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined


def _load_fla_scan():
    """flash-linear-attention's ``chunk_simple_gla`` (benchmarking, not a dependency)."""
    import importlib.util

    if importlib.util.find_spec("fla") is None:
        raise RowUnavailable("not installed (fla)")
    from fla.ops.simple_gla import chunk_simple_gla

    return chunk_simple_gla


def peer_versions() -> str:
    """torch, CUDA, Triton and the peers' versions (or why a peer is missing), for the table's header."""
    parts = [f"torch {torch.__version__}", f"CUDA {torch.version.cuda}"]
    try:
        import triton
        parts.append(f"triton {triton.__version__}")
    except ImportError:
        parts.append("triton not installed")
    for name, load in (("mamba_ssm", _load_mamba_scan), ("fla", _load_fla_scan)):
        try:
            load()
            parts.append(f"{name} {getattr(sys.modules[name], '__version__', '(version unknown)')}")
        except RowUnavailable as err:
            parts.append(str(err))
        except Exception as err:  # noqa: BLE001 - the row will say more; the header only names it
            parts.append(f"{name} fails to import ({type(err).__name__})")
    return ", ".join(parts)


def build_gpu_row(row: str, inputs: ScanInputs | None, attention, chunk_size: int):
    """(callable -> output, tensors whose gradients it makes) for one row of the CUDA table.

    Hydra rows read ``inputs`` and return y (B, L, H, P); ``sdpa`` reads ``attention``, the (q, k, v) triple
    of (B, H, L, P) tensors. Raises RowUnavailable when the row cannot run here.
    """
    from hydra_ssm.ops import quasiseparable_chunked
    from hydra_ssm.ops._shapes import expand_groups
    from hydra_ssm.ops.bidirectional import combine_directions

    if row == "sdpa":
        q, k, v = attention
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)

        try:
            with torch.no_grad():
                flash()
            return flash, [q, k, v]
        except RuntimeError:  # no flash kernel for this dtype or device: torch's own choice
            return (lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)), [q, k, v]

    t = inputs.tensors()
    x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D = t
    if row in ("triton", "eager"):
        kw = _scan_backend("triton" if row == "triton" else "torch")
        return (lambda: quasiseparable_chunked(*t, chunk_size=chunk_size, **kw)), t
    if row == "compile":
        kw = _scan_backend("torch")

        def scan(*args):
            return quasiseparable_chunked(*args, chunk_size=chunk_size, **kw)

        # a static graph per length (dynamic shapes compile far slower): reset, or the lengths would share one
        # cache and reach its recompilation limit; the warm-up runs pay for the compilation
        torch._dynamo.reset()
        compiled = torch.compile(scan, dynamic=False)
        return (lambda: compiled(*t)), t
    # the two-pass rows: a causal scan of x and one of the flipped x, shifted and added, + D x (Hydra's form)
    if row == "mamba":
        causal = _load_mamba_scan()

        def direction(xs, dt, B, C):
            return causal(xs, dt, A, B, C, chunk_size=MAMBA_CHUNK)
    elif row == "fla":
        gla = _load_fla_scan()
        heads = x.shape[2]

        def direction(xs, dt, B, C):
            # q = C, k = B on every head, v = dt x, log-gate dt A: the same causal SSD, unscaled
            values = (xs * dt.unsqueeze(-1)).to(xs.dtype)
            out, _ = gla(expand_groups(C, heads), expand_groups(B, heads), values, g=dt * A, scale=1.0)
            return out
    else:
        raise ValueError(f"unknown row {row!r}; expected one of {', '.join(GPU_ROWS)}")

    def two_pass():
        y_f = direction(x, dt_f, B_f, C_f)
        y_b = direction(x.flip(1), dt_b.flip(1), B_b.flip(1), C_b.flip(1))
        return combine_directions(y_f, y_b, x, D)

    return two_pass, t


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
    return text.replace("|", "/")[:120]


def measure_gpu_row(row, inputs, attention, args, device) -> dict:
    """Times (seconds) and peak memory (bytes) of one row, or its ``status``: OOM, not installed, failed: ..."""
    import gc
    import traceback

    result = {"row": row}
    try:
        fn, leaves = build_gpu_row(row, inputs, attention, args.chunk_size)
        result["fwd"], result["fwd_runs"] = time_call(fn, leaves, False, device, args.repeats, args.budget,
                                                      warmup=args.warmup)
        result["fwdbwd"], result["fwdbwd_runs"] = time_call(fn, leaves, True, device, args.repeats, args.budget,
                                                            warmup=args.warmup)
        if not args.no_memory:
            _zero_grads(leaves)
            peak = PeakMemory(device)
            fn().sum().backward()
            result["peak"] = peak.growth()
        _zero_grads(leaves)
    except torch.cuda.OutOfMemoryError:
        result["status"] = "OOM"
    except RowUnavailable as err:
        result["status"] = str(err)
    except Exception as err:  # noqa: BLE001 - one row's failure is reported in its cells; the table goes on
        if "out of memory" in str(err).lower():  # an allocation outside torch's allocator (a kernel's workspace)
            result["status"] = "OOM"
        else:
            traceback.print_exc(file=sys.stderr)
            result["status"] = f"failed: {_one_line(err)}"
    fn = leaves = None  # the closures hold graphs and outputs: free them before the next row
    for t in (inputs.tensors() if inputs is not None else []) + list(attention or []):
        t.grad = None
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return result


def gpu_rates(r: dict, length: int, args, heads: int) -> None:
    """Fill in the useful-FLOP rates (TFLOP/s) of what one row measured."""
    for key, backward in (("fwd", False), ("fwdbwd", True)):
        if key not in r:
            continue
        if r["row"] == "sdpa":
            flops = attention_flops(args.batch, length, heads, 64, backward)
        else:
            flops = hydra_scan_flops(args.batch, length, heads, 64, 64, FLOP_CHUNK, backward)
        r[f"{key}_tflops"] = flops / r[key] / 1e12


def fmt_ms(seconds):
    return f"{seconds * 1000:.3f}" if seconds < 0.01 else f"{seconds * 1000:.2f}"


def fmt_rate(x):
    return "—" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def gpu_table(results: list[dict], matmul_tflops: float) -> str:
    """The markdown table of ``results`` (one dict per length and row, as measure_gpu_row gives, with the rates).
    A row's status (OOM, not installed, failed: ...) fills the first cell it left unmeasured."""
    header = ("| L | row | fwd ms | fwd+bwd ms | peak fwd+bwd | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd+bwd / matmul | "
              "fwd vs triton | fwd+bwd vs triton |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        base = next((b for b in results if b["L"] == r["L"] and b["row"] == "triton"), {})
        status = r.get("status")
        cells = {}
        for key in ("fwd", "fwdbwd", "peak"):
            if key in r:
                cells[key] = fmt_mb(r[key]) if key == "peak" else fmt_ms(r[key])
            elif status is not None and (key == "fwd" or ("fwd" in r and key == "fwdbwd")
                                         or ("fwdbwd" in r and key == "peak")):
                cells[key], status = status, None
        lines.append("| " + " | ".join([
            f"{r['L'] // 1024}k" if r["L"] % 1024 == 0 else str(r["L"]), GPU_ROWS[r["row"]],
            cells.get("fwd", "—"), cells.get("fwdbwd", "—"), cells.get("peak", "—"),
            fmt_rate(r.get("fwd_tflops")), fmt_rate(r.get("fwdbwd_tflops")),
            "—" if "fwdbwd_tflops" not in r else f"{r['fwdbwd_tflops'] / matmul_tflops:.0%}",
            fmt_ratio(r.get("fwd"), base.get("fwd")), fmt_ratio(r.get("fwdbwd"), base.get("fwdbwd")),
        ]) + " |")
    return "\n".join(lines)


def run_gpu_table(args, device) -> int:
    """The CUDA table: per length, every row of ``args.rows`` at the scan shapes of a Hydra layer of width
    ``args.d_model`` (expand 2, headdim 64, d_state 64, one group), and sdpa at the same width."""
    dtype = getattr(torch, args.dtype)
    heads, headdim, dstate, ngroups = 2 * args.d_model // 64, 64, 64, 1
    machine = machine_description(device)
    versions = peer_versions()
    matmul_tflops = matmul_gflops(device, size=8192, repeats=10, dtype=dtype) / 1000
    head = (f"# hydra-ssm GPU benchmark: Hydra's scan\n\nmachine: {machine}\nsoftware: {versions}\n"
            f"{args.dtype} dense matmul (8192^3, median): {matmul_tflops:.0f} TFLOP/s\n"
            f"setup: batch {args.batch}, {args.dtype}, a Hydra layer of d_model {args.d_model}: H = {heads} heads, "
            f"P = {headdim}, N = {dstate}, G = {ngroups}; chunk {args.chunk_size} (triton, torch), "
            f"{MAMBA_CHUNK} (mamba_ssm), fla's own; torch compile: static, compiled per length; "
            f"sdpa: (B, {heads}, L, {headdim}), non-causal\n"
            f"times: median of up to {args.repeats} runs after {args.warmup} warm-up; peak: "
            f"torch.cuda.max_memory_allocated growth over the inputs; TFLOP/s: useful FLOPs "
            f"(hydra_scan_flops, Q = {FLOP_CHUNK}; attention 4 B H L^2 P, x3.5 with backward); "
            f"'vs triton': time / the triton row's time\n")
    print(head, flush=True)
    results = []
    gave_up = {}  # row -> status of a row that cannot run here
    for length in args.lengths:
        inputs = ScanInputs(args.batch, length, heads, headdim, dstate, ngroups, dtype, device)
        attention = None
        for row in args.rows:
            if row in gave_up:
                results.append({"L": length, "row": row, "status": gave_up[row]})
                continue
            if row == "sdpa":
                gen = torch.Generator(device=device).manual_seed(1)
                attention = [torch.randn(args.batch, heads, length, headdim, generator=gen, device=device)
                             .to(dtype).requires_grad_() for _ in range(3)]
            r = measure_gpu_row(row, None if row == "sdpa" else inputs, attention, args, device)
            attention = None
            r["L"] = length
            gpu_rates(r, length, args, heads)
            status = r.get("status", "OOM")
            if status != "OOM" and "fwd" not in r:
                # unavailable, or failed before any time was taken: not retried at longer lengths (a failing
                # compilation is long); a row whose forward ran is tried again
                gave_up[row] = status + (f" (at L={length}; not retried)" if status.startswith("failed") else "")
            results.append(r)
            shown = ", ".join([f"{name} {fmt_ms(r[k])} ms" for k, name in (("fwd", "fwd"), ("fwdbwd", "fwd+bwd"))
                               if k in r]
                              + ([r["status"]] if "status" in r else []))
            print(f"  L={length} {GPU_ROWS[row]}: {shown}", file=sys.stderr, flush=True)
        del inputs
        table = gpu_table(results, matmul_tflops)
        if args.output:  # rewritten after every length, so an interrupted run keeps what it measured
            with open(args.output, "w") as f:
                f.write(f"{head}\n{table}\n")
            with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
                json.dump({"machine": machine, "software": versions, "matmul_tflops": matmul_tflops,
                           "args": vars(args), "rows": results}, f, indent=2)
    print(gpu_table(results, matmul_tflops))
    return 0


def _usage_error(msg: str) -> int:
    print(f"hydra-ssm: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hydra-ssm bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+",
                        help="sequence lengths measured for every column (default: 1024 2048 4096 16384 32768; "
                             "with --device cuda: 512 1024 2048 4096 8192 16384)")
    parser.add_argument("--hydra-only-lengths", type=int, nargs="*",
                        help="longer lengths measured for the Hydra layer alone (default: 65536 131072; CPU table)")
    parser.add_argument("--quick", action="store_true", help="L = 1k and 2k only (a one-minute demo; CPU table)")
    parser.add_argument("--d-model", type=int, default=None, help="layer width (default: 512; with --device cuda: 768)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 1; with --device cuda: 8)")
    parser.add_argument("--chunk-size", type=int, default=64, help="Hydra chunk size (the layer default)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per cell, median reported (default: 3; with --device cuda: 10)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per cell after which no further timed run starts (default: 60; cuda: 10)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--device", default="cpu",
                        help="cpu: the Hydra layer against attention; cuda: Hydra's scan on the GPU (triton, torch "
                             "eager and compiled, mamba_ssm and fla two-pass) against sdpa")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="CUDA table: input dtype (default bfloat16)")
    parser.add_argument("--rows", nargs="+", choices=list(GPU_ROWS), help="CUDA table: the rows to run (default: all)")
    parser.add_argument("--warmup", type=int, default=None, help="CUDA table: untimed runs per cell (default 2)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", help="write the markdown table here and a JSON copy next to it")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        return _usage_error(f"--device {args.device!r} is not a device torch knows ({err}); expected cpu or cuda")
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        return _usage_error(f"--device {args.device}: no CUDA device is available to torch {torch.__version__} "
                            "here (torch.cuda.is_available() is False); run on a GPU machine or use --device cpu")
    if not cuda and device.type != "cpu":
        return _usage_error(f"--device {args.device}: expected cpu or cuda")
    wrong = ["--" + name.replace("_", "-") for name in (("hydra_only_lengths", "quick") if cuda
                                                        else ("dtype", "rows", "warmup"))
             if getattr(args, name) not in (None, False)]
    if wrong:
        return _usage_error(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to --device "
                            f"{args.device} (the {'CPU' if cuda else 'CUDA'} table's option)")
    defaults = (dict(lengths=GPU_LENGTHS, d_model=768, batch=8, repeats=10, budget=10.0, warmup=2,
                     dtype="bfloat16", rows=list(GPU_ROWS), hydra_only_lengths=[]) if cuda else
                dict(lengths=[1024, 2048, 4096, 16384, 32768], hydra_only_lengths=[65536, 131072], d_model=512,
                     batch=1, repeats=3, budget=60.0))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.quick:
        args.lengths, args.hydra_only_lengths = [1024, 2048], []
    for name in ("d_model", "batch", "chunk_size", "repeats", "threads") + (("warmup",) if cuda else ()):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if any(n <= 0 for n in args.lengths + args.hydra_only_lengths):
        parser.error("lengths must be positive")
    if cuda and args.d_model % 32:
        parser.error(f"--d-model must be a multiple of 32 (expand 2, headdim 64), got {args.d_model}")
    torch.set_num_threads(args.threads)
    if cuda:
        return run_gpu_table(args, device)

    machine = machine_description(args.device)
    mm = matmul_gflops(args.device)
    print(f"# hydra-ssm benchmark\n\nmachine: {machine}\nplain 2048^3 matmul: {mm:.0f} GFLOP/s\n"
          f"setup: batch {args.batch}, d_model {args.d_model}, Hydra defaults (d_state 64, headdim 64, "
          f"expand 2, chunk_size {args.chunk_size}); attention: 8 heads, qkv/out projections, SDPA\n", flush=True)

    try:
        load_peer_scan()
        peer = True
    except ImportError as err:
        print(f"peer row skipped: {err} (pip install 'hydra-ssm[hf]')", file=sys.stderr)
        peer = False
    rows = []
    for length in args.lengths + args.hydra_only_lengths:
        full = length in args.lengths
        kinds = ["hydra", "mha", "fused", "two_pass"] + (["peer"] if peer else []) if full else ["hydra"]
        row = {"L": length}
        for kind in kinds:
            chunk = args.chunk_size
            if kind == "peer":
                chunk = row["peer_chunk"] = fastest_peer_chunk(args.d_model, length, args.batch, args.device)
            fn, owner = build(kind, args.d_model, length, args.batch, args.device, chunk)
            if kind in ("hydra", "mha"):
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
              "(fwd+bwd) | fused scan fwd+bwd | two-pass fwd+bwd | fused vs two-pass | peer fwd+bwd (chunk) | "
              "fused vs peer | scan GFLOP/s | matmul GFLOP/s | scan / matmul |")
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
            "—" if "peer_fwdbwd" not in r else f"{fmt_s(r['peer_fwdbwd'])} ({r['peer_chunk']})",
            fmt_ratio(r.get("peer_fwdbwd"), r.get("fused_fwdbwd")),
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
