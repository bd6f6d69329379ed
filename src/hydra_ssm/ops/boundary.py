"""Hydra over a sequence cut into segments: the exact states at the cuts, in both directions.

Hydra's forward direction carries a state left to right, its backward direction a
state right to left (see ``quasiseparable.py``). Cut one sequence into consecutive
segments. Given, for a segment,

* ``state_fwd_in``: the forward state after the last position before it,
* ``state_bwd_in``: the backward state at the first position after it,
* the C rows that its first and last outputs read across the cuts (output i reads
  ``C_fwd[i-1]`` and ``C_bwd[i+1]``),

its outputs are exact::

    y(segment) = quasiseparable_chunked(segment, no initial states) + entering_state_readout(...)

The entering states themselves come from small per-segment summaries, composed in
order. So a sequence can be computed one segment at a time (streaming: memory of
one segment plus one summary per segment), or by several processes that each hold
one segment (context parallelism: only the summaries travel). The steps:

1. :func:`segment_summary`: per segment, from zero entering states, the forward
   state it hands to the right, the backward state it hands to the left, and the
   log-decay across it in each direction: O(H P N) numbers, whatever its length;
2. :func:`entering_states`: the summaries composed in order, forward left to right
   and backward right to left: ``state_in[s+1] = exp(log_decay[s]) state_in[s] + state_out[s]``;
3. :func:`entering_state_readout`: what the entering states add to the segment's
   outputs.

Per head, with ``a_f[k] = exp(dt_fwd[k] A)`` and ``a_b[k] = exp(dt_bwd[k] A)`` over
the segment's positions 0 .. n-1::

    state_fwd_out = sum_j  prod_{j<k<n} a_f[k]  dt_fwd[j] x[j] B_fwd[j]^T        (P x N)
    state_bwd_out = sum_j  prod_{0<=k<j} a_b[k] dt_bwd[j] x[j] B_bwd[j]^T
    readout[i]    = prod_{0<=k<i} a_f[k] state_fwd_in C_fwd_read[i]
                  + prod_{i<k<n}  a_b[k] state_bwd_in C_bwd_read[i]

Every exponent is a running sum of the log-decays it spans (never a difference of
two long sums), so float32 stays accurate at any segment length. States are laid
out (B, H, P, N), as the scans' ``initial_states``. Everything is plain
differentiable torch: gradients reach the summaries' inputs through autograd.
What autograd keeps for backward beyond the inputs is small: the summary's
weighted sums are recomputed in backward (``torch.utils.checkpoint``), and the
readout keeps one (B, n, H, P) product per direction, the size of its output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from ._shapes import check_ssm_args, check_state, check_tensor, compute_dtype
from .minimal import exclusive_cumsum


class SegmentSummary(NamedTuple):
    """What one segment hands on, computed from zero entering states."""

    state_fwd: torch.Tensor  # (B, H, P, N) forward state after the segment's last position
    state_bwd: torch.Tensor  # (B, H, P, N) backward state at the segment's first position
    log_decay_fwd: torch.Tensor  # (B, H) sum of dt_fwd * A over the segment, <= 0
    log_decay_bwd: torch.Tensor  # (B, H) sum of dt_bwd * A over the segment, <= 0


class EnteringStates(NamedTuple):
    """The states entering one segment from its two sides."""

    fwd: torch.Tensor | None  # (B, H, P, N) from the left; None: zero
    bwd: torch.Tensor | None  # (B, H, P, N) from the right; None: zero


def segment_summary(x, dt_fwd, dt_bwd, A, B_fwd, B_bwd) -> SegmentSummary:
    """The states a segment hands on in each direction, and its log-decays.

    Args:
        x: (B, n, H, P) values; dt_fwd, dt_bwd: (B, n, H) step sizes (>= 0);
        A: (H,); B_fwd, B_bwd: (B, n, G, N). An empty segment (n = 0) hands on zeros.

    Returns a :class:`SegmentSummary` in float32 (float64 if any input is float64).
    """
    b, n, h, p, g, d = check_ssm_args(x, dt_fwd, A, B_fwd, None, suffix="_fwd")
    check_ssm_args(x, dt_bwd, A, B_bwd, None, suffix="_bwd")
    cdt = compute_dtype(x, dt_fwd, dt_bwd, A, B_fwd, B_bwd)
    x, rate = x.to(cdt), A.to(cdt)

    def handed_on(dt, B, reverse):
        log_a = dt.to(cdt) * rate  # (B, n, H)
        # decay from position j to the segment's far end: the positions after j (forward) or before j (backward)
        weight = torch.exp(exclusive_cumsum(log_a.transpose(1, 2), reverse=not reverse)).transpose(1, 2) * dt.to(cdt)
        # recomputed in backward: autograd keeps x, B (the scans keep them anyway) and the (B, n, H) weight,
        # not a (B, n, H, P) product per direction that would be alive through the whole backward pass
        state = checkpoint(_weighted_outer_sum, x, weight, B.to(cdt), use_reentrant=False, preserve_rng_state=False)
        return state, log_a.sum(1)

    state_fwd, decay_fwd = handed_on(dt_fwd, B_fwd, reverse=False)
    state_bwd, decay_bwd = handed_on(dt_bwd, B_bwd, reverse=True)
    return SegmentSummary(state_fwd, state_bwd, decay_fwd, decay_bwd)


def entering_states(summaries: list[SegmentSummary], initial_states=(None, None)) -> list[EnteringStates]:
    """The states entering every segment, from the segments' summaries in sequence order.

    ``initial_states``: (forward, backward), each None or (B, H, P, N): the forward
    state entering the first segment and the backward state entering the last one
    (the whole sequence's initial states). Exact composition of the decays; a short
    loop over segments, on (B, H, P, N) states only.
    """
    n = len(summaries)
    fwd, bwd = [None] * n, [None] * n
    state = initial_states[0]
    for s in range(n):
        fwd[s] = state
        state = _carry(state, summaries[s].log_decay_fwd, summaries[s].state_fwd)
    state = initial_states[1]
    for s in range(n - 1, -1, -1):
        bwd[s] = state
        state = _carry(state, summaries[s].log_decay_bwd, summaries[s].state_bwd)
    return [EnteringStates(f, b) for f, b in zip(fwd, bwd)]


def _carry(state, log_decay, handed_on):
    """The state leaving a segment: the entering one decayed across it, plus what the segment adds."""
    if state is None:
        return handed_on
    return torch.exp(log_decay)[..., None, None].to(handed_on.dtype) * state.to(handed_on.dtype) + handed_on


def entering_state_readout(dt_fwd, dt_bwd, A, C_fwd_read, C_bwd_read, state_fwd_in=None, state_bwd_in=None):
    """What the entering states add to a segment's outputs: (B, n, H, P).

    Args:
        dt_fwd, dt_bwd: (B, n, H) the segment's step sizes; A: (H,).
        C_fwd_read: (B, n, G, N): row i is ``C_fwd[i-1]`` (row 0: the last C_fwd before
            the segment, zero at the sequence's start);
        C_bwd_read: (B, n, G, N): row i is ``C_bwd[i+1]`` (the last row: the first
            C_bwd after the segment, zero at the sequence's end);
        state_fwd_in, state_bwd_in: None (zero) or (B, H, P, N) / (H, P, N).

    Computed in float32 (float64 if any input is float64).
    """
    check_tensor(dt_fwd, "dt_fwd")
    if dt_fwd.dim() != 3:
        raise ValueError(f"dt_fwd must have shape (batch, seqlen, nheads), got {tuple(dt_fwd.shape)}")
    b, n, h = dt_fwd.shape
    for name, t in (("dt_bwd", dt_bwd), ("A", A), ("C_fwd_read", C_fwd_read), ("C_bwd_read", C_bwd_read)):
        check_tensor(t, name, dt_fwd.device)
    if dt_bwd.shape != dt_fwd.shape:
        raise ValueError(f"dt_bwd must have the shape of dt_fwd {tuple(dt_fwd.shape)}, got {tuple(dt_bwd.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must have shape (nheads,) = {(h,)}, got {tuple(A.shape)}")
    if C_fwd_read.dim() != 4 or C_fwd_read.shape[:2] != (b, n) or h % max(C_fwd_read.shape[2], 1):
        raise ValueError(f"C_fwd_read must have shape (batch, seqlen, ngroups, dstate) with batch, seqlen = {(b, n)} "
                         f"and ngroups dividing nheads ({h}), got {tuple(C_fwd_read.shape)}")
    if C_bwd_read.shape != C_fwd_read.shape:
        raise ValueError(f"C_bwd_read must have the shape of C_fwd_read {tuple(C_fwd_read.shape)}, "
                         f"got {tuple(C_bwd_read.shape)}")
    if state_fwd_in is None and state_bwd_in is None:
        raise ValueError("entering_state_readout needs state_fwd_in, state_bwd_in or both")
    d = C_fwd_read.shape[3]
    p = next(s for s in (state_fwd_in, state_bwd_in) if s is not None).shape[-2]
    state_fwd_in = check_state(state_fwd_in, b, h, p, d, "state_fwd_in", dt_fwd.device)
    state_bwd_in = check_state(state_bwd_in, b, h, p, d, "state_bwd_in", dt_fwd.device)
    cdt = compute_dtype(dt_fwd, dt_bwd, A, C_fwd_read, C_bwd_read, state_fwd_in, state_bwd_in)
    rate = A.to(cdt)

    g = C_fwd_read.shape[2]
    y = None
    for dt, C, state, reverse in ((dt_fwd, C_fwd_read, state_fwd_in, False), (dt_bwd, C_bwd_read, state_bwd_in, True)):
        if state is None:
            continue
        # decay from the cut to position i: the positions before i (forward) or after i (backward)
        log_a = (dt.to(cdt) * rate).transpose(1, 2)  # (B, H, n)
        decay = torch.exp(exclusive_cumsum(log_a, reverse=reverse)).transpose(1, 2)  # (B, n, H)
        # C . state for all the heads of a group in one matmul (head h reads group h // (H/G): a group's heads are consecutive)
        per_group = state.to(cdt).reshape(b, g, h // g, p, d)
        read = torch.einsum("blgn,bgkpn->blgkp", C.to(cdt), per_group).reshape(b, n, h, p)
        y = read * decay.unsqueeze(-1) if y is None else torch.addcmul(y, read, decay.unsqueeze(-1))
    return y


def _weighted_outer_sum(x, weight, B):
    """sum_j weight[j] x[j] B[j]^T per head: x (b, n, H, P), weight (b, n, H), B (b, n, G, N) -> (b, H, P, N).

    One matmul per batch and group over the n positions, (K P x n) by (n x N) with K = H/G heads
    per group, so B is never copied per head. The weight is folded into x, making one (b, n, H, P)
    product, or into B (per head) where that is smaller: when G = H and N < P.
    """
    b, n, h, p = x.shape
    g, d = B.shape[2], B.shape[3]
    if g == h and d < p:
        B = B * weight.unsqueeze(-1)
    else:
        x = x * weight.unsqueeze(-1)
    # (b, G, K P, n) @ (b, G, n, N): head h = group h // K, its K heads consecutive in x's head axis
    by_group = x.reshape(b, n, g, (h // g) * p).permute(0, 2, 3, 1)
    return (by_group @ B.transpose(1, 2)).reshape(b, h, p, d)
