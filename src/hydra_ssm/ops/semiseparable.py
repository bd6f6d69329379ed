"""Causal SSD (Mamba-2 semantics), chunked: O(L) time and memory for any L."""

from __future__ import annotations

from ._layout import check_chunk_size, to_chunks
from ._shapes import check_ssm_args, check_state, check_step_sizes, compute_dtype
from .chunked import Direction, DirectionTensors, chunk_scan, log_decays
from .reference import semiseparable_ref

CAUSAL = Direction(lower=True, strict=False)


def semiseparable_chunked(x, dt, A, B, C, chunk_size: int = 64, initial_states=None, return_final_states: bool = False):
    """Causal SSD ``y_t = C_t^T h_t``, ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T``.

    Args:
        x: (B, L, H, P) values.
        dt: (B, L, H) step sizes (>= 0, checked; 0 means "skip this position").
        A: (H,) negative decay rates.
        B, C: (B, L, G, N) input / output projections; head h uses group h // (H / G).
        chunk_size: positions per chunk; any L is accepted.
        initial_states: optional (B, H, P, N) or (H, P, N) state before position 0.
        return_final_states: also return the (B, H, P, N) state after the last position.

    Computed in float32 (float64 if any input is float64); the output has x's dtype.
    Arguments are checked as described in ``_shapes``. Batch 0 or length 0: an
    empty output (and the initial state, or zeros, as the final state).
    """
    b, l, h, p, g, n = check_ssm_args(x, dt, A, B, C)
    check_chunk_size(chunk_size)
    initial_states = check_state(initial_states, b, h, p, n, "initial_states", x.device)
    check_step_sizes(dt=dt)
    if b == 0 or l == 0:  # nothing to scan; the reference gives the empty output and zero gradients
        return semiseparable_ref(x, dt, A, B, C, initial_states, return_final_states)
    out_dtype = x.dtype
    cdt = compute_dtype(x, dt, A, B, C, initial_states)
    q = min(chunk_size, l)

    dtc = to_chunks(dt.to(cdt).unsqueeze(-1), q).squeeze(-1)  # (c, b, H, Q)
    Bc, Cc = (to_chunks(t.to(cdt), q) for t in (B, C))  # (c, b, G, Q, N)
    (decays,) = log_decays([dtc], A, [CAUSAL], cdt)
    init = None if initial_states is None else initial_states.to(cdt).transpose(-1, -2).contiguous()
    scan = DirectionTensors(C=Cc, B=Bc, dt=dtc, r=decays.r, k=decays.k, T=decays.T, init=init)
    y, (final,) = chunk_scan([CAUSAL], x.to(cdt), q, [scan])
    y = y.to(out_dtype)
    if return_final_states:
        return y, final.transpose(-1, -2).to(out_dtype)
    return y
