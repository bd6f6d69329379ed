"""Hydra's quasiseparable mixer: the fused chunked form and the two-pass baseline.

Both compute, for x (B, L, H, P)::

    y = shift(SS_f(x)) + flip(shift(SS_b(flip(x)))) + D * x

where SS is the causal SSD (``semiseparable_chunked``) and shift moves outputs
one position later (row 0 gets zero). The explicit matrix is
``reference.quasiseparable_matrix``. Arguments are checked as described in
``_shapes`` (shapes, floating dtypes, devices, dt >= 0); batch 0 or length 0
gives an empty output.
"""

from __future__ import annotations

import torch.nn.functional as F

from ._layout import check_chunk_size, to_chunks
from ._shapes import check_hydra_args, compute_dtype
from .chunked import Direction, DirectionTensors, chunk_scan, log_decays
from .reference import quasiseparable_ref
from .semiseparable import semiseparable_chunked

FORWARD = Direction(lower=True, strict=True)
BACKWARD = Direction(lower=False, strict=True)


def _check(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, chunk_size, initial_states):
    check_chunk_size(chunk_size)
    return check_hydra_args(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, initial_states)


def _add_diag(y, x, D):
    if D is None:
        return y
    return y + x * D.to(y.dtype).unsqueeze(-1)


def quasiseparable_chunked(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=None, chunk_size: int = 64,
                           initial_states=None):
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

    Each Q x Q diagonal block (both triangles) is built once and applied with
    one matmul; forward states are carried left to right and backward states
    right to left in the same call, without flipped copies.
    Computed in float32 (float64 if any input is float64); output in x's dtype.
    Batch 0 or length 0: an empty (B, L, H, P) output, through the reference.
    """
    (b, l, h, p, g, n), (s_fwd, s_bwd) = _check(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, chunk_size,
                                                initial_states)
    if b == 0 or l == 0:  # nothing to scan; the reference gives the empty output and zero gradients
        return quasiseparable_ref(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, initial_states)
    out_dtype = x.dtype
    cdt = compute_dtype(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, s_fwd, s_bwd)
    q = min(chunk_size, l)
    # Output i reads C_f[i-1] (forward) and C_b[i+1] (backward).
    C_fwd = F.pad(C_fwd.to(cdt), (0, 0, 0, 0, 1, 0))[:, :l]
    C_bwd = F.pad(C_bwd.to(cdt), (0, 0, 0, 0, 0, 1))[:, 1:]

    dts = [to_chunks(dt.to(cdt).unsqueeze(-1), q).squeeze(-1) for dt in (dt_fwd, dt_bwd)]  # (c, b, H, Q)
    decays = log_decays(dts, A, [FORWARD, BACKWARD], cdt)
    dirs = []
    for dtc, dec, B, C, s0 in zip(dts, decays, (B_fwd, B_bwd), (C_fwd, C_bwd), (s_fwd, s_bwd)):
        init = None if s0 is None else s0.to(cdt).transpose(-1, -2).contiguous()
        dirs.append(DirectionTensors(C=to_chunks(C.to(cdt), q), B=to_chunks(B.to(cdt), q), dt=dtc, r=dec.r, k=dec.k,
                                     T=dec.T, init=init))
    y, _ = chunk_scan([FORWARD, BACKWARD], x.to(cdt), q, dirs)
    return _add_diag(y, x.to(cdt), None if D is None else D.to(cdt)).to(out_dtype)


def _shift(y):
    """Move outputs one position later along L; position 0 gets zero."""
    return F.pad(y, (0, 0, 0, 0, 1, 0))[:, :-1]


def quasiseparable_two_pass(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=None, chunk_size: int = 64,
                            initial_states=None):
    """The same mixer as :func:`quasiseparable_chunked`, computed as two causal
    scans: one on x, one on the flipped x (same arguments)."""
    _, (s_fwd, s_bwd) = _check(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, chunk_size, initial_states)
    cdt = compute_dtype(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, s_fwd, s_bwd)
    xf = x.to(cdt)
    y_fwd = semiseparable_chunked(xf, dt_fwd, A, B_fwd, C_fwd, chunk_size, s_fwd)
    flip = lambda t: t.flip(1)  # noqa: E731
    y_bwd = semiseparable_chunked(flip(xf), flip(dt_bwd), A, flip(B_bwd), flip(C_bwd), chunk_size, s_bwd)
    y = _shift(y_fwd) + flip(_shift(y_bwd))
    return _add_diag(y, xf, None if D is None else D.to(cdt)).to(x.dtype)
