"""Hydra's quasiseparable mixer: the fused chunked form and the two-pass baseline.

Both compute, for x (B, L, H, P)::

    y = shift(SS_f(x)) + flip(shift(SS_b(flip(x)))) + D * x

where SS is the causal SSD (``semiseparable_chunked``) and shift moves outputs
one position later (row 0 gets zero). The explicit matrix is
``reference.quasiseparable_matrix``. Arguments are checked as described in
``_shapes`` (shapes, floating dtypes, devices, dt >= 0); batch 0 or length 0
gives an empty output.

Packed batches (``cu_seqlens``, offsets (n + 1,) as in flash-attention): the
inputs are one row (1, total, ...) holding n sequences back to back, and every
sequence is mixed as if it were alone: neither direction, nor the readout shift,
crosses a boundary; initial states enter every sequence. The fused path runs them
in one scan (see :func:`quasiseparable_chunked`), the two-pass path in two packed
causal scans (``semiseparable_chunked`` takes ``cu_seqlens`` too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._layout import PackedLayout, check_chunk_size, sequence_slices, to_chunks
from .bidirectional import shift_later
from ._shapes import check_cu_seqlens, check_hydra_args, compute_dtype
from .chunked import Direction, DirectionTensors, chunk_scan, log_decays
from .reference import quasiseparable_ref
from .semiseparable import semiseparable_chunked

FORWARD = Direction(lower=True, strict=True)
BACKWARD = Direction(lower=False, strict=True)


def _check(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, chunk_size, initial_states, cu_seqlens=None):
    """All the arguments; returns (sizes, states, sequence lengths or None) (see ``check_hydra_args``)."""
    check_chunk_size(chunk_size)
    sizes, states = check_hydra_args(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, initial_states)
    lengths = None if cu_seqlens is None else check_cu_seqlens(cu_seqlens, sizes[0], sizes[1])
    return sizes, states, lengths


def _sequence_ends(lengths: list[int]) -> tuple[list[int], list[int]]:
    """The packed positions of the first and of the last element of every non-empty sequence."""
    parts = [part for part in sequence_slices(lengths) if part.stop > part.start]
    return [part.start for part in parts], [part.stop - 1 for part in parts]


def _zero_at(positions: list[int], t):
    """(L, 1, 1) of t's dtype: 1 along L but 0 at ``positions`` (t: (1, L, ...))."""
    keep = torch.ones(t.shape[1], dtype=t.dtype, device=t.device)
    return keep.index_fill(0, torch.tensor(positions, dtype=torch.long, device=t.device), 0)[:, None, None]


def _add_diag(y, x, D):
    """y + D x in one pass (D None, (H,) or (B, L, H))."""
    return y if D is None else torch.addcmul(y, x, D.to(x.dtype).unsqueeze(-1))


BACKENDS = ("auto", "torch", "triton")


# The Triton kernels hold (chunk x d_state) and (d_state x headdim) tiles in registers.
TRITON_MAX_WIDTH = 128


def resolve_backend(backend: str, x: torch.Tensor, cu_seqlens=None, dstate: int = 0) -> str:
    """``"torch"`` or ``"triton"``: what ``backend`` means for inputs like x (see :func:`quasiseparable_chunked`).

    ``"auto"`` is Triton for CUDA tensors when the package can be imported, the batch is not packed and
    headdim (x's last size) and ``dstate`` are at most ``TRITON_MAX_WIDTH``, else torch. ``"triton"`` is
    refused, with the reason, where it cannot run.
    """
    from .triton import interpreting, triton_available

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    narrow = max(x.shape[-1], dstate) <= TRITON_MAX_WIDTH
    if backend == "auto":
        return "triton" if x.is_cuda and cu_seqlens is None and narrow and triton_available() else "torch"
    if backend == "triton":
        if not narrow:
            raise ValueError(f"backend='triton' takes headdim and d_state up to {TRITON_MAX_WIDTH}, got headdim "
                             f"{x.shape[-1]} and d_state {dstate}: use backend='torch'")
        if not triton_available():
            raise ImportError("backend='triton' needs the triton package: pip install 'hydra-ssm[triton]'")
        if cu_seqlens is not None:
            raise ValueError("backend='triton' does not take packed batches (cu_seqlens): use backend='torch' "
                             "or 'auto' (which runs them on torch)")
        if not x.is_cuda and not interpreting():
            raise ValueError(f"backend='triton' runs CUDA tensors (x is on {x.device}); set TRITON_INTERPRET=1 "
                             "before the first call to run its kernels on CPU tensors in Triton's interpreter")
    return backend


def quasiseparable_chunked(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=None, chunk_size: int = 64,
                           initial_states=None, cu_seqlens=None, backend: str = "auto"):
    """Hydra's mixer in one pass over the chunks for both directions.

    Args:
        x: (B, L, H, P) values.
        dt_fwd, dt_bwd: (B, L, H) step sizes of the two directions (>= 0, checked;
            0 skips a position).
        A: (H,) negative decay rates (shared by both directions).
        B_fwd, C_fwd, B_bwd, C_bwd: (B, L, G, N).
        D: None, (H,) or (B, L, H): the diagonal.
        chunk_size: positions per chunk; any L is accepted.
        initial_states: None, a (B, H, P, N) / (H, P, N) state used by both
            directions, or a (forward, backward) pair.
        cu_seqlens: None, or the (n + 1,) integer offsets of n sequences packed
            into one row (B = 1, L = total): each is mixed alone, and the initial
            states enter every one of them.
        backend: ``"torch"`` (the pure-PyTorch scan below, any device), ``"triton"``
            (fused Triton kernels, ``hydra_ssm.ops.triton``: CUDA tensors, or CPU
            tensors under ``TRITON_INTERPRET=1``; no packed batches; no host
            synchronisation beyond the argument checks) or ``"auto"`` (Triton for CUDA
            tensors when it can be imported and the batch is not packed, else torch).
            The Triton kernels use chunks of ``block_chunk(chunk_size)`` (a power of two
            in [16, 64]) and keep bfloat16 / float16 matmul operands in that dtype, with
            float32 accumulation.

    Each Q x Q diagonal block (both triangles) is built once and applied with
    one matmul; forward states are carried left to right and backward states
    right to left in the same call, without flipped copies.
    Computed in float32 (float64 if any input is float64); output in x's dtype.
    Batch 0 or length 0: an empty (B, L, H, P) output, through the reference.

    A packed batch is scattered into a copy where every sequence starts at a
    multiple of the chunk size (zeros after it, dt = 0: no input, no decay, nothing
    read), so that no chunk holds two sequences; the carry between chunks then
    restarts from the initial state at each sequence's first chunk (forward) and
    last chunk (backward). The outputs are gathered back into the packed row.
    """
    (b, l, h, p, g, n), (s_fwd, s_bwd), lengths = _check(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D,
                                                         chunk_size, initial_states, cu_seqlens)
    if b == 0 or l == 0:  # nothing to scan; the reference gives the empty output and zero gradients
        return quasiseparable_ref(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, initial_states)
    if resolve_backend(backend, x, cu_seqlens, n) == "triton":
        from .triton import hydra_scan

        return hydra_scan(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, chunk_size, (s_fwd, s_bwd))
    out_dtype = x.dtype
    cdt = compute_dtype(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, s_fwd, s_bwd)
    if lengths is None:
        lengths = [l]
    q = min(chunk_size, max(lengths))
    x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd = (t.to(cdt) for t in (x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd))
    # Output i reads C_f[i-1] (forward) and C_b[i+1] (backward).
    C_fwd = F.pad(C_fwd, (0, 0, 0, 0, 1, 0))[:, :l]
    C_bwd = F.pad(C_bwd, (0, 0, 0, 0, 0, 1))[:, 1:]
    values, layout, resets = x, None, None
    if len(lengths) > 1:
        # ... never across a boundary: a sequence's first output reads no C_f, its last one no C_b
        first, last = _sequence_ends(lengths)
        C_fwd = C_fwd * _zero_at(first, C_fwd)
        C_bwd = C_bwd * _zero_at(last, C_bwd)
        layout = PackedLayout(lengths, q, 0, x.device)
        values, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd = (
            layout.scatter(t) for t in (x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd))
        # the carry restarts at each sequence's first chunk (forward) and last chunk (backward)
        resets = [layout.first_chunks(), layout.last_chunks()]

    dts = [to_chunks(dt.unsqueeze(-1), q).squeeze(-1) for dt in (dt_fwd, dt_bwd)]  # (c, b, H, Q)
    decays = log_decays(dts, A, [FORWARD, BACKWARD], cdt)
    dirs = []
    for dtc, dec, B, C, s0 in zip(dts, decays, (B_fwd, B_bwd), (C_fwd, C_bwd), (s_fwd, s_bwd)):
        init = None if s0 is None else s0.to(cdt).transpose(-1, -2).contiguous()
        dirs.append(DirectionTensors(C=to_chunks(C, q), B=to_chunks(B, q), dt=dtc, r=dec.r, k=dec.k, T=dec.T,
                                     init=init))
    y, _ = chunk_scan([FORWARD, BACKWARD], values, q, dirs, resets)
    if layout is not None:
        y = layout.gather(y)
    return _add_diag(y, x, None if D is None else D.to(cdt)).to(out_dtype)


def quasiseparable_two_pass(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=None, chunk_size: int = 64,
                            initial_states=None, cu_seqlens=None):
    """The same mixer as :func:`quasiseparable_chunked`, computed as two causal
    scans: one on x, one on the flipped x (same arguments). A packed batch
    (``cu_seqlens``) is two packed causal scans too: the flipped row holds the
    sequences reversed, in reverse order, and no shift crosses a boundary."""
    (_, l, *_), (s_fwd, s_bwd), lengths = _check(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, chunk_size,
                                                 initial_states, cu_seqlens)
    cdt = compute_dtype(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, s_fwd, s_bwd)
    xf = x.to(cdt)
    flip = lambda t: t.flip(1)  # noqa: E731
    offsets_bwd = None if lengths is None else l - cu_seqlens.flip(0)  # the sequences of the flipped row
    y_fwd = semiseparable_chunked(xf, dt_fwd, A, B_fwd, C_fwd, chunk_size, s_fwd, cu_seqlens=cu_seqlens)
    y_bwd = semiseparable_chunked(flip(xf), flip(dt_bwd), A, flip(B_bwd), flip(C_bwd), chunk_size, s_bwd,
                                  cu_seqlens=offsets_bwd)
    y_fwd, y_bwd = shift_later(y_fwd), flip(shift_later(y_bwd))
    if lengths is not None:
        # a sequence's first output reads nothing from the left, its last nothing from the right
        first, last = _sequence_ends(lengths)
        y_fwd, y_bwd = y_fwd * _zero_at(first, y_fwd), y_bwd * _zero_at(last, y_bwd)
    return _add_diag(y_fwd + y_bwd, xf, None if D is None else D.to(cdt)).to(x.dtype)
