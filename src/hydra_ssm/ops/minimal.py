"""Hydra's quasiseparable mixer on one page: the chunked algorithm, vectorised.

This is the path for deployment (``torch.export``, ONNX) and the shortest
complete statement of the algorithm. It computes the same ``y`` as
:func:`hydra_ssm.ops.quasiseparable_chunked` with plain differentiable tensor
operations only: no in-place writes, no ``out=`` variants, no Python loop or
branch whose course depends on the sequence length or on the data. So one
traced graph holds for every sequence length.

Per head, for x (B, L, H, P), step sizes dt (B, L, H) and B, C (B, L, G, N) of
each direction, A (H,), and ``a[k] = exp(dt[k] A)``::

    y[i] =   sum_{j<i} C_f[i-1] . B_f[j]  dt_f[j]  prod_{j<k<i} a_f[k]  x[j]     forward, strictly lower
           + sum_{j>i} C_b[i+1] . B_b[j]  dt_b[j]  prod_{i<k<j} a_b[k]  x[j]     backward, strictly upper
           + D[i] x[i]                                                          diagonal

Pad L to c = L // Q + 2 chunks of Q positions (x = 0, dt = 0 and B = C = 0 on
the padding: no input, no decay, nothing read), then:

1. inside each chunk, the Q x Q block of both triangles, applied with one matmul;
2. per chunk, the state each direction hands on: forward to the next chunk,
   backward to the previous one;
3. across chunks, the state entering every chunk, from a (c x c) matrix of
   decays between chunks: no loop over chunks in either direction;
4. the entering states read out at every position of the chunk.

Every exponent is a segment sum (the log-decays of exactly the positions it
spans), never the difference of two long cumulative sums: nothing cancels, so
float32 stays accurate at any length and any decay.

It shares no code with the fast scan (``chunked.py``): the tests hold it to the
explicit matrix (``reference.py``) and the fast scan to it, outputs and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._shapes import compute_dtype, expand_groups
from .quasiseparable import _check
from .reference import per_sequence, quasiseparable_ref


def exclusive_cumsum(log_a: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """(..., T) -> (..., T): sum over k < t of log_a[..., k] (k > t when ``reverse``)."""
    if reverse:
        return exclusive_cumsum(log_a.flip(-1)).flip(-1)
    return F.pad(log_a, (1, 0))[..., :-1].cumsum(-1)


def segment_sums(log_a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): E[..., i, j] = sum_{j<k<i} log_a[..., k] for j < i, -inf for j >= i.

    exp(E) is the strictly lower-triangular matrix of decays between positions.
    Column j accumulates log_a[k] for k = j+1, j+2, ... only, so every entry is
    a sum of its own terms.
    """
    t = log_a.shape[-1]
    pos = torch.arange(t, device=log_a.device)
    after = pos[:, None] > pos[None, :]  # (T, T): row index past column index
    # terms[k, j] = log_a[k] for k > j, else 0; summed down each column: sum_{j<k<=i}
    running = torch.where(after, log_a.unsqueeze(-1), 0.0).cumsum(-2)
    # one row down drops k = i: sum_{j<k<i}
    strict = F.pad(running, (0, 0, 1, 0))[..., :-1, :]
    return strict.masked_fill(~after, float("-inf"))


def quasiseparable_minimal(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=None, chunk_size: int = 64,
                           initial_states=None, cu_seqlens=None):
    """Hydra's mixer with no loops: same arguments and result as :func:`quasiseparable_chunked`.

    Args:
        x: (B, L, H, P) values.
        dt_fwd, dt_bwd: (B, L, H) step sizes of the two directions (>= 0).
        A: (H,) negative decay rates (shared by both directions).
        B_fwd, C_fwd, B_bwd, C_bwd: (B, L, G, N); head h uses group h // (H / G).
        D: None, (H,) or (B, L, H): the diagonal.
        chunk_size: Q, positions per chunk; L is padded to (L // Q + 2) Q positions.
        initial_states: None, a (B, H, P, N) / (H, P, N) state used by both
            directions, or a (forward, backward) pair. The forward state enters
            before position 0, the backward one after position L-1.
        cu_seqlens: None, or the (n + 1,) offsets of a packed batch (B = 1): the
            sequences are then run one at a time (a loop over data-dependent
            lengths, so a packed batch cannot be exported; export pads instead).

    Returns y (B, L, H, P) in x's dtype, computed in float32 (float64 if any
    input is float64). Memory is O(B H L Q) for the blocks plus O(B H (L/Q)^2)
    for the decays between chunks.
    """
    (batch, seqlen, nheads, headdim, _, dstate), (state0_fwd, state0_bwd), lengths = _check(
        x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, chunk_size, initial_states, cu_seqlens)
    if lengths is not None:
        return per_sequence(quasiseparable_minimal, lengths, x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D,
                            initial_states, chunk_size=chunk_size)
    if any(isinstance(size, int) and size == 0 for size in (batch, seqlen)):
        # Nothing to scan: the reference gives the empty output. (A dynamic size while tracing is no
        # plain int: the graph keeps no branch on it.)
        return quasiseparable_ref(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, initial_states=initial_states)
    cdt = compute_dtype(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, state0_fwd, state0_bwd)
    q = chunk_size
    # Padded length c Q with c = L // Q + 2 >= 2 chunks: no size in a traced graph can then be 1 or equal L,
    # so torch.export needs no guard that would tie the graph to lengths on one side of such a boundary.
    nchunks = seqlen // q + 2
    position = torch.arange(nchunks, device=x.device)[:, None] * q + torch.arange(q, device=x.device)  # (c, Q)
    inside = position < seqlen
    source = position.clamp(max=seqlen - 1)

    def chunked(t):
        """(B, L, H, ...) -> (B, H, c, Q, ...), zero on the padding: no input, no decay (dt = 0), nothing read.

        Head-major, so that every product below batches over leading (B, H, c) in that order."""
        t = t.to(cdt).transpose(1, 2)[:, :, source]
        return torch.where(inside.view(nchunks, q, *[1] * (t.dim() - 4)), t, 0.0)

    # Output i reads C_f[i-1] (forward) and C_b[i+1] (backward): shift them into place.
    C_fwd_read = F.pad(C_fwd, (0, 0, 0, 0, 1, 0))[:, :seqlen]
    C_bwd_read = F.pad(C_bwd, (0, 0, 0, 0, 0, 1))[:, 1:]
    values = chunked(x)  # (B, H, c, Q, P)
    B_f, C_f, B_b, C_b = (chunked(expand_groups(t, nheads)) for t in (B_fwd, C_fwd_read, B_bwd, C_bwd_read))
    dt_f, dt_b = chunked(dt_fwd), chunked(dt_bwd)  # (B, H, c, Q)
    rate = A.to(cdt)[None, :, None, None]
    log_a_f, log_a_b = dt_f * rate, dt_b * rate  # (B, H, c, Q), <= 0

    # 1. Inside each chunk: M[i, j] = C.B dt_j exp(decay between i and j), forward below the diagonal,
    #    backward above it (the backward decays are the forward formula on the transpose).
    decay_f = torch.exp(segment_sums(log_a_f))  # (B, H, c, Q, Q), zero on and above the diagonal
    decay_b = torch.exp(segment_sums(log_a_b)).transpose(-1, -2)  # zero on and below the diagonal
    scores_f = torch.einsum("bhcin,bhcjn->bhcij", C_f, B_f)
    scores_b = torch.einsum("bhcin,bhcjn->bhcij", C_b, B_b)
    block = scores_f * decay_f * dt_f.unsqueeze(-2) + scores_b * decay_b * dt_b.unsqueeze(-2)
    y = torch.einsum("bhcij,bhcjp->bhcip", block, values)

    # 2. The state each chunk hands on, (B, H, c, P, N): forward from its positions to its last one,
    #    backward from its positions to its first one.
    to_end_f = torch.exp(exclusive_cumsum(log_a_f, reverse=True)) * dt_f  # decay from j past the chunk's end
    to_start_b = torch.exp(exclusive_cumsum(log_a_b)) * dt_b  # decay from j past the chunk's start
    states_f = torch.einsum("bhcj,bhcjn,bhcjp->bhcpn", to_end_f, B_f, values)
    states_b = torch.einsum("bhcj,bhcjn,bhcjp->bhcpn", to_start_b, B_b, values)

    # 3. Across chunks: the state entering chunk z is the sum over earlier (forward) or later (backward)
    #    chunks w of exp(log-decay of the chunks strictly between them) * states[w]: one (c x c) product.
    total_f, total_b = log_a_f.sum(-1), log_a_b.sum(-1)  # (B, H, c): log-decay across each whole chunk
    between_f = torch.exp(segment_sums(total_f))  # (B, H, c, c) [z, w], w < z
    between_b = torch.exp(segment_sums(total_b)).transpose(-1, -2)  # [z, w], w > z
    entering_f = torch.einsum("bhzw,bhwpn->bhzpn", between_f, states_f)
    entering_b = torch.einsum("bhzw,bhwpn->bhzpn", between_b, states_b)
    # Initial states enter before the first chunk (forward) and after the last one (backward).
    if state0_fwd is not None:
        before = torch.exp(exclusive_cumsum(total_f))[..., None, None]  # (B, H, c, 1, 1)
        entering_f = entering_f + before * state0_fwd.to(cdt).unsqueeze(2)
    if state0_bwd is not None:
        after = torch.exp(exclusive_cumsum(total_b, reverse=True))[..., None, None]
        entering_b = entering_b + after * state0_bwd.to(cdt).unsqueeze(2)

    # 4. Read the entering states out: decay from the chunk's start up to i-1 (forward),
    #    from the chunk's end down to i+1 (backward).
    from_start_f = torch.exp(exclusive_cumsum(log_a_f))  # (B, H, c, Q)
    from_end_b = torch.exp(exclusive_cumsum(log_a_b, reverse=True))
    y = y + torch.einsum("bhcin,bhcpn,bhci->bhcip", C_f, entering_f, from_start_f)
    y = y + torch.einsum("bhcin,bhcpn,bhci->bhcip", C_b, entering_b, from_end_b)

    # Back to (B, L, H, P), padding dropped; the diagonal D x.
    y = y.flatten(2, 3).index_select(2, torch.arange(seqlen, device=x.device)).transpose(1, 2)
    if D is not None:
        y = y + x.to(cdt) * D.to(cdt).unsqueeze(-1)
    return y.to(x.dtype)
