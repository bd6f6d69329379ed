"""Causal SSD (Mamba-2 semantics), chunked: O(L) time and memory for any L."""

from __future__ import annotations

import torch

from ._layout import PackedLayout, check_chunk_size, to_chunks
from ._shapes import check_cu_seqlens, check_ssm_args, check_state, check_step_sizes, compute_dtype
from .chunked import Direction, DirectionTensors, chunk_scan, log_decays
from .reference import semiseparable_ref

CAUSAL = Direction(lower=True, strict=False)


def semiseparable_chunked(x, dt, A, B, C, chunk_size: int = 64, initial_states=None, return_final_states: bool = False,
                          cu_seqlens=None):
    """Causal SSD ``y_t = C_t^T h_t``, ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T``.

    Args:
        x: (B, L, H, P) values.
        dt: (B, L, H) step sizes (>= 0, checked; 0 means "skip this position").
        A: (H,) negative decay rates.
        B, C: (B, L, G, N) input / output projections; head h uses group h // (H / G).
        chunk_size: positions per chunk; any L is accepted.
        initial_states: optional (B, H, P, N) or (H, P, N) state before position 0.
        return_final_states: also return the (B, H, P, N) state after the last position.
        cu_seqlens: None, or the (n + 1,) integer offsets of n sequences packed into
            one row (B = 1, L = total): each is scanned alone, the initial state
            entering every one of them; the final states are then one per sequence,
            (n, H, P, N) (an empty sequence's is its initial state, or zeros).

    Computed in float32 (float64 if any input is float64); the output has x's dtype.
    Arguments are checked as described in ``_shapes``. Batch 0 or length 0: an
    empty output (and the initial state, or zeros, as the final state).

    A packed batch is scattered into a copy where every sequence starts at a
    multiple of the chunk size (zeros after it, dt = 0: no input, no decay), so that
    no chunk holds two sequences; the carry between chunks restarts from the initial
    state at each sequence's first chunk, and the state leaving its last chunk is
    its final state. The outputs are gathered back into the packed row.
    """
    b, l, h, p, g, n = check_ssm_args(x, dt, A, B, C)
    check_chunk_size(chunk_size)
    initial_states = check_state(initial_states, b, h, p, n, "initial_states", x.device)
    check_step_sizes(dt=dt)
    lengths = None if cu_seqlens is None else check_cu_seqlens(cu_seqlens, b, l)
    if b == 0 or l == 0:  # nothing to scan; the reference gives the empty output and zero gradients
        return semiseparable_ref(x, dt, A, B, C, initial_states, return_final_states, cu_seqlens)
    out_dtype = x.dtype
    cdt = compute_dtype(x, dt, A, B, C, initial_states)
    q = min(chunk_size, l if lengths is None else max(lengths))
    x, dt, B, C = (t.to(cdt) for t in (x, dt, B, C))
    values, layout, resets = x, None, None
    if lengths is not None:
        layout = PackedLayout(lengths, q, 0, x.device)
        values, dt, B, C = (layout.scatter(t) for t in (x, dt, B, C))
        resets = [layout.first_chunks()]

    dtc = to_chunks(dt.unsqueeze(-1), q).squeeze(-1)  # (c, b, H, Q)
    Bc, Cc = (to_chunks(t, q) for t in (B, C))  # (c, b, G, Q, N)
    (decays,) = log_decays([dtc], A, [CAUSAL], cdt)
    init = None if initial_states is None else initial_states.to(cdt).transpose(-1, -2).contiguous()
    scan = DirectionTensors(C=Cc, B=Bc, dt=dtc, r=decays.r, k=decays.k, T=decays.T, init=init)
    y, (finals,) = chunk_scan([CAUSAL], values, q, [scan], resets)  # finals: (runs, b, H, N, P)
    if layout is not None:
        y = layout.gather(y)
    y = y.to(out_dtype)
    if not return_final_states:
        return y
    finals = finals.transpose(-1, -2)
    if lengths is None:
        return y, finals[-1].to(out_dtype)
    # one state per sequence: the runs are the non-empty sequences in order; an empty one hands on its initial state
    start = finals.new_zeros(h, p, n) if initial_states is None else initial_states[0].to(cdt)
    ran = iter(finals[:, 0])
    return y, torch.stack([next(ran) if length else start for length in lengths]).to(out_dtype)
