"""The chunked scan core shared by the causal SSD and Hydra, with a hand-written backward.

One call handles one *direction*, or Hydra's pair of strict directions, over the same
chunked input x:

* a lower (left-to-right) direction: outputs at position i read inputs j < i
  (strict) or j <= i (inclusive), states carried from the first chunk to the last;
* an upper (right-to-left) direction: outputs read inputs j > i, states
  carried from the last chunk to the first.

Chunk-major layout (c chunks of Q positions, batch b, heads H, groups G). x is
shared; each direction is one :class:`DirectionTensors` record (its fields below):

    x        (c, b, H, Q, P)     value stream
    C, B     (c, b, G, Q, N)     head h uses group h // (H/G)
    dt       (c, b, H, Q)        >= 0
    r, k     (c, b, H, Q)        log row / column decays
    T        (c, b, H)           log decay across the whole chunk
    init     (b, H, N, P)|None   state entering the first chunk visited

Every direction is described by the same three log-decays, all <= 0 where they
are used, so nothing overflows for any length or step size:

    inside a chunk   M[i, j] = C_i . B_j * dt_j * exp(r_i - k_j)    (i, j in the triangle)
    chunk state      S       = sum_j exp(T - k_j) dt_j B_j x_j^T     (N x P)
    carried state    H_next  = exp(T) H_prev + S
    across chunks    y_i    += exp(r_i) C_i^T H_prev

The work is done slab by slab (a contiguous range of chunks) so that the
Q x Q temporaries stay small, are reused, and memory stays O(L):

1. chunk states S of every direction, slab by slab;
2. the carries (a short loop over chunks, in place: S becomes the entering state);
   the state entering a *reset* chunk is the initial state (or zero) instead: the
   first chunk visited, and for a packed batch laid out with every sequence
   starting on a chunk (``quasiseparable.py``, ``semiseparable.py``) each
   sequence's first (forward) or last (backward) chunk, so no state crosses a
   sequence boundary; the state leaving the last chunk before each reset (and
   the last chunk visited) is a final state, one per sequence;
3. outputs, slab by slab: the diagonal blocks of both directions summed into
   one matrix and applied with one matmul, plus C . (entering state). For
   Hydra the two strict triangles are disjoint, so the block is built as one
   exponential with dt folded into the column decays (see
   ``_exponent_block``).

The backward pass (``_ChunkScan.backward``) runs the same steps in reverse, with
no saved intermediates beyond the inputs (memory stays O(L)):

1-2. per direction (``_states_backward``): recompute the entering states; their
   gradient from the outputs, (exp(r_i) C_i)^T dy; the carry reversed (a loop over
   chunks in the other order), which turns it into the gradient of every chunk
   state S and leaves the initial state's gradient (summed over the reset chunks); then, slab by slab, the
   gradients of the across-chunk terms (C, r, T) and of the chunk states (B, dt,
   k, T), and dx's part through S;
3. inside the chunks, slab by slab: dM = dy x^T, shared by both directions; the
   block M is rebuilt with dt as a factor (not folded into the exponent, so the
   dt gradient is right at dt = 0), then d dt, dr, dk, dC, dB from dM * M's
   factors, and dx += M^T dy.

Gradients are a :class:`DirectionTensors` per direction too, addressed by field.

The callers (``semiseparable.py``, ``quasiseparable.py``) prepare r, k, T with
:func:`log_decays`, under ordinary autograd.

Host synchronisation: :func:`log_decays` reads the largest decay across a chunk
of every direction, in one synchronisation, to choose float32 or float64
log-decays (none for float64 inputs, none while compiling); that and the callers'
dt >= 0 check are the scan's only ones. The dt check is a value check: by default
it runs on CPU tensors only (``hydra_ssm.set_validation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ._layout import from_chunks, to_chunks

# Elements of one (s, b, H, Q, Q) slab of diagonal blocks: 4M float32 = 16 MB,
# small enough for the allocator to reuse instead of mapping fresh pages.
_SLAB_ELEMENTS = 1 << 22

# Largest |log decay| inside a chunk for which float32 log-decays are exact enough
# (absolute error ~ 2^-24 * 256 = 1.5e-5 in the exponent).
_FLOAT32_LOG_DECAY_LIMIT = 256.0


@dataclass(frozen=True)
class Direction:
    lower: bool  # True: left to right (outputs read earlier positions)
    strict: bool  # True: the diagonal is excluded


class DirectionTensors(NamedTuple):
    """One direction's inputs, chunk-major (see the module notes); in the backward pass, their gradients."""

    C: torch.Tensor  # (c, b, G, Q, N) output projections
    B: torch.Tensor  # (c, b, G, Q, N) input projections
    dt: torch.Tensor  # (c, b, H, Q) step sizes, >= 0
    r: torch.Tensor  # (c, b, H, Q) log row decays
    k: torch.Tensor  # (c, b, H, Q) log column decays
    T: torch.Tensor  # (c, b, H) log decay across the whole chunk
    init: torch.Tensor | None  # (b, H, N, P): the state entering the first chunk visited, or None


class LogDecays(NamedTuple):
    """One direction's log-decays (see :func:`log_decays`)."""

    r: torch.Tensor  # (c, b, H, Q) row log-decays
    k: torch.Tensor  # (c, b, H, Q) column log-decays
    T: torch.Tensor  # (c, b, H) the chunk's total


def _log_decays_float64(dt: torch.Tensor, A: torch.Tensor, d: Direction) -> LogDecays:
    """(r, k, T) of one direction in float64; dt: (c, b, H, Q), A: (H,)."""
    log_a = dt.double() * A.double()[:, None]
    cs = torch.cumsum(log_a, dim=-1)  # sum over chunk start .. i
    ecs = cs - log_a  # sum over chunk start .. i-1
    total = cs[..., -1]
    if d.lower:
        r, k = (ecs if d.strict else cs), cs
    else:
        tot = total.unsqueeze(-1)
        r, k = tot - cs, tot - (ecs if d.strict else cs)
    return LogDecays(r, k, total)


def log_decays(dts: list[torch.Tensor], A: torch.Tensor, dirs: list[Direction], dtype: torch.dtype) -> list[LogDecays]:
    """Row, column and chunk log-decays (r, k, T) of every direction.

    dts: one (c, b, H, Q) step-size tensor per direction, A: (H,). For the lower
    direction r_i - k_j = sum_{l=j+1..i-1} dt_l A (strict) or sum_{l=j+1..i}
    (inclusive); for the upper direction r_i - k_j = sum_{l=i+1..j-1} dt_l A. T is
    the chunk's total. The sums are formed in float64 and, per direction, kept in
    float64 when a chunk's total decay is so large that float32 would round the
    differences, else rounded to ``dtype``. Reading those largest decays is one
    host synchronisation for all directions (none while compiling: ``dtype`` then).
    """
    decays = [_log_decays_float64(dt, A, d) for dt, d in zip(dts, dirs)]
    if dtype == torch.float64:
        return decays
    if torch.compiler.is_compiling():
        narrow = [True] * len(decays)
    else:
        largest = torch.stack([-dec.T.detach().min() for dec in decays]).tolist()
        narrow = [value <= _FLOAT32_LOG_DECAY_LIMIT for value in largest]  # NaN: kept in float64, as it was
    return [LogDecays(*(t.to(dtype) for t in dec)) if n else dec for dec, n in zip(decays, narrow)]


def _triangle(q: int, d: Direction, device) -> torch.Tensor:
    """Boolean (Q, Q) mask of the pairs (i, j) outside the direction's triangle."""
    ones = torch.ones(q, q, dtype=torch.bool, device=device)
    offset = 1 if d.strict else 0
    return ~(ones.tril(-offset) if d.lower else ones.triu(offset))


def _on_or_below_diagonal(q: int, device) -> torch.Tensor:
    """Boolean (Q, Q) mask of i >= j: Hydra's forward (strictly lower) triangle and the diagonal."""
    return torch.ones(q, q, dtype=torch.bool, device=device).tril()


def _slabs(nchunks: int, per_chunk: int):
    step = max(1, _SLAB_ELEMENTS // max(per_chunk, 1))
    for start in range(0, nchunks, step):
        yield slice(start, min(start + step, nchunks))


def _by_group(t: torch.Tensor, ngroups: int) -> torch.Tensor:
    """(s, b, H, ...) -> (s, b, G, H/G, ...) view."""
    return t.view(*t.shape[:2], ngroups, t.shape[2] // ngroups, *t.shape[3:])


def _per_head(t_group: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(s, b, G, Q, N) * (s, b, H, Q) -> (s, b, H, Q, N): a group tensor scaled per head."""
    g = t_group.shape[2]
    out = t_group.unsqueeze(3) * _by_group(scale, g).unsqueeze(-1)
    return out.flatten(2, 3)


def _bmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """out (+)= a @ b over all leading dimensions, writing in place."""
    o = out.view(-1, *out.shape[-2:])
    a = a.reshape(-1, *a.shape[-2:])
    b = b.reshape(-1, *b.shape[-2:])
    if accumulate:
        o.baddbmm_(a, b)
    else:
        torch.bmm(a, b, out=o)


def _matvec(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(..., Q, Q) @ (..., Q) -> (..., Q); einsum runs this as one reduction, far faster than a batched matmul."""
    return torch.einsum("...ij,...j->...i", m, v)


def _outer_difference(out: torch.Tensor, r, k) -> torch.Tensor:
    """out[..., i, j] = r_i - k_j."""
    if r.dtype == out.dtype:
        return torch.sub(r.unsqueeze(-1), k.unsqueeze(-2), out=out)
    return out.copy_(r.unsqueeze(-1) - k.unsqueeze(-2))  # float64 log-decays: differences taken before rounding


def _decay_block(out: torch.Tensor, r, k, outside: torch.Tensor) -> torch.Tensor:
    """out = exp(r_i - k_j) inside the triangle, 0 outside: (s, b, H, Q, Q)."""
    return _outer_difference(out, r, k).masked_fill_(outside, float("-inf")).exp_()


def _flatten(tensors: list[DirectionTensors]) -> list:
    """The fields of every direction in one list, as autograd.Function takes its inputs."""
    return [t for direction in tensors for t in direction]


def _unflatten(flat, ndirs: int) -> list[DirectionTensors]:
    """Inverse of :func:`_flatten`."""
    width = len(DirectionTensors._fields)
    return [DirectionTensors(*flat[width * i: width * (i + 1)]) for i in range(ndirs)]


# ---------------------------------------------------------------- one direction's block
def _one_direction_block(M, sl, t: DirectionTensors, outside, g):
    """M = C_i . B_j dt_j exp(r_i - k_j) on the direction's triangle, 0 outside (chunks ``sl``)."""
    _decay_block(M, t.r[sl], t.k[sl], outside)
    M.mul_(t.dt[sl].unsqueeze(-2))
    _by_group(M, g).mul_((t.C[sl] @ t.B[sl].transpose(-1, -2)).unsqueeze(3))
    return M


# ---------------------------------------------------------------- both directions in one block
# For Hydra (a strict lower and a strict upper direction) the two triangles are
# disjoint, so the whole Q x Q block is one exponential:
#     M[i, j] = CB[i, j] * exp(E[i, j]),   E[i, j] = r_i - k'_j,   k'_j = k_j - log dt_j
# with (r, k', CB) of the forward direction below the diagonal and of the backward
# direction above it. Folding dt into k' saves the separate dt pass of the forward;
# dt = 0 gives k' = +inf, an exact 0. The backward keeps dt as a factor (see
# ``_bidirectional_block_backward``): the gradient of log dt would need a division by dt.


def _is_bidirectional(dirs) -> bool:
    return len(dirs) == 2 and dirs[0].lower and dirs[0].strict and not dirs[1].lower and dirs[1].strict


def _log_dt_shift(dt, k):
    """k' = k - log(dt): exp(r - k') = exp(r - k) * dt, exactly 0 where dt = 0 (dt >= 0 is checked by the callers)."""
    return k - torch.log(dt).to(k.dtype)


def _exponent_block(E, work, below, sl, r_fwd, k_fwd, r_bwd, k_bwd, below_weight=None, above_weight=None):
    """E = r_i - k_j of the forward direction below the diagonal, of the backward one above, -inf on it.

    ``below``: the (Q, Q) mask of i >= j. ``below_weight``, ``above_weight``: the same
    mask and its complement as 0/1 floats, for finite exponents only (the backward's):
    E_f * below + E_b * above is exact there and cheaper than the where.
    """
    _outer_difference(E, r_fwd[sl], k_fwd[sl])
    _outer_difference(work, r_bwd[sl], k_bwd[sl])
    if below_weight is None:
        torch.where(below, E, work, out=E)
    else:
        E.mul_(below_weight).addcmul_(work, above_weight)
    E.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    return E


def _combined_cb(sl, fwd: DirectionTensors, bwd: DirectionTensors, below):
    """(s, b, G, Q, Q): C_f . B_f below the diagonal, C_b . B_b above it."""
    return torch.where(below, fwd.C[sl] @ fwd.B[sl].transpose(-1, -2), bwd.C[sl] @ bwd.B[sl].transpose(-1, -2))


def _bidirectional_block(M, work, sl, fwd: DirectionTensors, bwd: DirectionTensors, k_dt_fwd, k_dt_bwd, below, g):
    """M = C_i . B_j dt_j exp(r_i - k_j) of both directions (chunks ``sl``); ``k_dt_*``: the shifted k'."""
    _exponent_block(M, work, below, sl, fwd.r, k_dt_fwd, bwd.r, k_dt_bwd).exp_()
    cb = _combined_cb(sl, fwd, bwd, below)
    _by_group(M, g).mul_(cb.unsqueeze(3))
    return M


# ---------------------------------------------------------------- across chunks
def _chunk_states(x, B, dt, k, T, g):
    """S = sum_j exp(T - k_j) dt_j B_j x_j^T for every chunk: (c, b, H, N, P)."""
    c, b, h, q, p = x.shape
    S = x.new_empty(c, b, h, B.shape[-1], p)
    for sl in _slabs(c, b * h * q * max(p, B.shape[-1])):
        w = torch.exp(T[sl].unsqueeze(-1) - k[sl]).to(x.dtype) * dt[sl]
        _bmm_into(S[sl], _per_head(B[sl], w).transpose(-1, -2), x[sl], False)
    return S


def _visit_order(nchunks: int, lower: bool) -> range:
    """The chunks in the order a direction visits them."""
    return range(nchunks) if lower else range(nchunks - 1, -1, -1)


def _carry_in_place(S, T, init, lower: bool, resets: frozenset):
    """Turn chunk states S into the state entering each chunk, in place; return the final states.

    The state entering a chunk of ``resets`` is ``init`` (zero when None) instead of the carry.
    The resets cut the chunks, in visit order, into runs (the first chunk visited starts one);
    returns the state leaving the last chunk of every run, in visit order: (runs, b, H, N, P)."""
    decay = torch.exp(T).to(S.dtype)[..., None, None]  # (c, b, H, 1, 1)
    start = torch.zeros_like(S[0]) if init is None else init
    state, finals = start, []
    for n, ci in enumerate(_visit_order(S.shape[0], lower)):
        if ci in resets and n > 0:
            finals.append(state)
            state = start
        leaving = torch.addcmul(S[ci], decay[ci], state)
        S[ci].copy_(state)
        state = leaving
    finals.append(state)
    return torch.stack(finals)


class _ChunkScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dirs, chunk_size, resets, x_seq, *flat):
        # x_seq: (b, L, H, P); flat: the fields of every direction (see _flatten), init None where absent.
        # x is chunked here rather than by the caller so that only x_seq is saved.
        x = to_chunks(x_seq, chunk_size)
        tensors = _unflatten(flat, len(dirs))
        c, b, h, q, p = x.shape
        g = tensors[0].C.shape[2]

        # 1-2. every direction's chunk states, then the carries: S becomes the state entering each chunk
        entering, finals = [], []
        for d, t, reset in zip(dirs, tensors, resets):
            S = _chunk_states(x, t.B, t.dt, t.k, t.T, g)
            finals.append(_carry_in_place(S, t.T, t.init, d.lower, reset))
            entering.append(S)

        # 3. outputs, slab by slab: y = M x with M the diagonal blocks, plus exp(r_i) C_i . (entering state)
        bidirectional = _is_bidirectional(dirs)
        if bidirectional:
            fwd, bwd = tensors
            below = _on_or_below_diagonal(q, x.device)
            k_dt_fwd, k_dt_bwd = _log_dt_shift(fwd.dt, fwd.k), _log_dt_shift(bwd.dt, bwd.k)
        else:
            (d,), (one,) = dirs, tensors
            outside = _triangle(q, d, x.device)
        y = torch.empty_like(x)
        M = work = None
        for sl in _slabs(c, b * h * q * q):
            shape = (sl.stop - sl.start, b, h, q, q)
            if M is None or M.shape != shape:
                M, work = x.new_empty(shape), (x.new_empty(shape) if bidirectional else None)
            if bidirectional:
                _bidirectional_block(M, work, sl, fwd, bwd, k_dt_fwd, k_dt_bwd, below, g)
            else:
                _one_direction_block(M, sl, one, outside, g)
            _bmm_into(y[sl], M, x[sl], False)
            for t, ent in zip(tensors, entering):
                if not _enters_zero(c, t):
                    _bmm_into(y[sl], _per_head(t.C[sl], torch.exp(t.r[sl]).to(x.dtype)), ent[sl], True)

        ctx.dirs, ctx.chunk_size, ctx.resets = dirs, chunk_size, resets
        ctx.has_init = [t.init is not None for t in tensors]
        ctx.save_for_backward(x_seq, *[t if t is not None else x.new_empty(0) for t in flat])
        return (from_chunks(y, x_seq.shape[1]), *finals)

    @staticmethod
    def backward(ctx, dy, *dfinals):
        x_seq, *flat = ctx.saved_tensors
        dirs = ctx.dirs
        x = to_chunks(x_seq, ctx.chunk_size)
        dy = to_chunks(dy, ctx.chunk_size)
        tensors = [t if has_init else t._replace(init=None)
                   for t, has_init in zip(_unflatten(flat, len(dirs)), ctx.has_init)]
        c, b, h, q, p = x.shape
        g = tensors[0].C.shape[2]
        dx = torch.empty_like(x)

        # 1-2 reversed, one direction at a time: the across-chunk terms (entering states, carries,
        # chunk states), which also write dx's part through the chunk states
        grads = [_states_backward(d, t, reset, dfinal, x, dy, dx, g, accumulate=n > 0)
                 for n, (d, t, reset, dfinal) in enumerate(zip(dirs, tensors, ctx.resets, dfinals))]

        # 3 reversed, inside the chunks, slab by slab: both directions share dM = dy x^T and dx += M^T dy
        bidirectional = _is_bidirectional(dirs)
        if bidirectional:
            below = _on_or_below_diagonal(q, x.device)
        else:
            (d,), (one,), (grad,) = dirs, tensors, grads
            outside = _triangle(q, d, x.device)
        bufs = None
        for sl in _slabs(c, b * h * q * q):
            shape = (sl.stop - sl.start, b, h, q, q)
            if bufs is None or bufs[0].shape != shape:
                bufs = [x.new_empty(shape) for _ in range(4)]
            M, dM, K, KC = bufs
            xs, dys = x[sl], dy[sl]
            _bmm_into(dM, dys, xs.transpose(-1, -2), False)  # dM = dy x^T
            if bidirectional:
                _bidirectional_block_backward(M, dM, K, KC, sl, tensors, grads, below, g)
                _bmm_into(dx[sl], M.transpose(-1, -2), dys, True)  # dx += M^T dy
                continue
            # one direction (the causal SSD): M = CB * decay * dt_j with decay = exp(r_i - k_j) on the triangle
            Cs, Bs, dts = one.C[sl], one.B[sl], one.dt[sl]
            CB = (Cs @ Bs.transpose(-1, -2)).unsqueeze(3)  # (s, b, G, 1, Q, Q)
            decay = _decay_block(K, one.r[sl], one.k[sl], outside)
            # the value matrix, for dx
            torch.mul(decay, dts.unsqueeze(-2), out=M)
            _by_group(M, g).mul_(CB)
            # K = dM * decay, KC = K * CB
            K.mul_(dM)
            torch.mul(_by_group(K, g), CB, out=_by_group(KC, g))
            col = KC.sum(-2)  # sum_i KC[i, j]
            grad.dt[sl] += col  # d dt_j (direct)
            grad.r[sl] += _matvec(KC, dts)  # d r_i = sum_j KC_ij dt_j
            grad.k[sl] -= col * dts  # d k_j
            dCB = _by_group(K.mul_(dts.unsqueeze(-2)), g).sum(3)  # (s, b, G, Q, Q): summed over the group's heads
            grad.C[sl] += dCB @ Bs
            grad.B[sl] += dCB.transpose(-1, -2) @ Cs
            _bmm_into(dx[sl], M.transpose(-1, -2), dys, True)  # dx += M^T dy

        return (None, None, None, from_chunks(dx, x_seq.shape[1]), *_flatten(grads))


def _bidirectional_block_backward(M, dM, X, W, sl, tensors, grads, below, g):
    """Gradients of the combined Hydra block; leaves the block M in ``M`` for dx.

    M = CB * exp(E) * dt_j with E = r_i - k_j (the unshifted log-decays) and dt_j the
    step size of the direction owning (i, j). dt stays a factor here instead of being
    folded into the exponent as in the forward pass, so that its gradient is
    accumulated directly and is right at dt_j = 0 too. With KC = dM * CB * exp(E),
    each sum over its own direction's triangle:

        d dt_j = sum_i KC_ij,   dr_i = sum_j KC_ij dt_j,   dk_j = -dt_j d dt_j,
        dCB    = sum over the group's heads of dM * exp(E) * dt_j.

    ``X``, ``W``: (s, b, H, Q, Q) work buffers; ``dM`` is overwritten.
    """
    fwd, bwd = tensors
    below_weight = below.to(X.dtype)
    above_weight = 1 - below_weight
    _exponent_block(X, W, below, sl, fwd.r, fwd.k, bwd.r, bwd.k, below_weight, above_weight).exp_()  # X = exp(E)
    dt_fwd, dt_bwd = fwd.dt[sl], bwd.dt[sl]
    # W[i, j] = dt_j of the direction owning (i, j); exact (one of the two terms is 0), cheaper than a where
    torch.mul(dt_fwd.unsqueeze(-2), below_weight, out=W).addcmul_(dt_bwd.unsqueeze(-2), above_weight)
    cb = _combined_cb(sl, fwd, bwd, below).unsqueeze(3)
    torch.mul(_by_group(X, g), cb, out=_by_group(M, g))  # M = CB exp(E)
    X.mul_(dM)  # dM exp(E)
    KC = dM.mul_(M)
    M.mul_(W)  # the block itself, for dx
    dcb = _by_group(X.mul_(W), g).sum(3)  # (s, b, G, Q, Q)
    # each direction's part of KC, exactly (a product with a 0/1 mask, then the rest; KC's diagonal is 0)
    kc_below = torch.mul(KC, below_weight, out=W)
    kc_above = KC.sub_(kc_below)
    for t, grad, dts, kc, dcb_part in zip(tensors, grads, (dt_fwd, dt_bwd), (kc_below, kc_above),
                                          (dcb.tril(-1), dcb.triu(1))):
        col = kc.sum(-2)
        grad.dt[sl] += col
        grad.r[sl] += _matvec(kc, dts)
        grad.k[sl] -= col * dts
        grad.C[sl] += dcb_part @ t.B[sl]
        grad.B[sl] += dcb_part.transpose(-1, -2) @ t.C[sl]


def _enters_zero(nchunks: int, t: DirectionTensors) -> bool:
    """Whether every chunk's entering state is zero: one chunk, and no initial state."""
    return nchunks == 1 and t.init is None


def _zero_grads(t: DirectionTensors) -> DirectionTensors:
    return DirectionTensors(C=torch.zeros_like(t.C), B=torch.zeros_like(t.B), dt=torch.zeros_like(t.dt),
                            r=torch.zeros_like(t.r), k=torch.zeros_like(t.k), T=torch.zeros_like(t.T), init=None)


def _states_backward(d, t: DirectionTensors, resets: frozenset, dfinal, x, dy, dx, g, accumulate) -> DirectionTensors:
    """Gradients of one direction's across-chunk terms; writes (or adds) its part of dx.

    Returns the gradients of t's fields (the intra-chunk terms are added later).
    One direction at a time, so only its entering states and their gradients are alive.
    A single chunk with no initial state and no gradient of the final state has no
    across-chunk terms: zero gradients, and dx's part is zero.
    """
    c, b, h, q, p = x.shape
    if _enters_zero(c, t) and dfinal is None:
        if not accumulate:
            dx.zero_()
        return _zero_grads(t)
    # recompute the states entering each chunk (forward steps 1-2)
    ent = _chunk_states(x, t.B, t.dt, t.k, t.T, g)
    _carry_in_place(ent, t.T, t.init, d.lower, resets)
    # gradient w.r.t. the entering states from the outputs: (C_i exp(r_i))^T dy
    dS = torch.empty_like(ent)
    slabs = list(_slabs(c, b * h * q * max(p, t.C.shape[-1])))
    for sl in slabs:
        _bmm_into(dS[sl], _per_head(t.C[sl], torch.exp(t.r[sl]).to(x.dtype)).transpose(-1, -2), dy[sl], False)
    # reverse of the carry, in place: dS becomes the gradient w.r.t. each chunk's state S;
    # the carry stops at every reset chunk, whose entering state is the initial one: what
    # reaches it there is added to the initial state's gradient (the first chunk visited is one),
    # and the chunk visited before it, the last of the run before, leaves that run's final state
    decay = torch.exp(t.T).to(x.dtype)[..., None, None]
    if dfinal is None:
        dfinal = ent.new_zeros(len(resets), *ent.shape[1:])
    run = len(resets) - 1  # the runs in visit order (see _carry_in_place), the last one first
    state_grad = dfinal[run]
    init_grad = torch.zeros_like(ent[0])
    for ci in reversed(_visit_order(c, d.lower)):
        to_prev = torch.addcmul(dS[ci], decay[ci], state_grad)
        dS[ci].copy_(state_grad)
        if ci in resets:
            init_grad += to_prev
            run -= 1
            state_grad = dfinal[max(run, 0)]  # (run -1: the first chunk visited, the loop's last step)
        else:
            state_grad = to_prev
    grad = _zero_grads(t)._replace(init=None if t.init is None else init_grad)
    for sl in slabs:
        Cs, Bs, dts, rs, ks, Ts = t.C[sl], t.B[sl], t.dt[sl], t.r[sl], t.k[sl], t.T[sl]
        ents, dSs, xs, dys = ent[sl], dS[sl], x[sl], dy[sl]
        # the carry H_next = exp(T) H + S
        grad.T[sl] += (decay[sl, ..., 0, 0] * (dSs * ents).sum((-1, -2))).to(grad.T.dtype)
        # outputs: y_i += exp(r_i) C_i^T entering
        er = torch.exp(rs).to(x.dtype)
        dCe = dys @ ents.transpose(-1, -2)  # (s, b, H, Q, N)
        grad.C[sl] += (_by_group(dCe, g) * _by_group(er, g).unsqueeze(-1)).sum(3)
        grad.r[sl] += (dCe * _per_head(Cs, er)).sum(-1)
        # chunk states: S = sum_j w_j B_j x_j^T with w = exp(T - k) dt
        ew = torch.exp(Ts.unsqueeze(-1) - ks).to(x.dtype)
        w = ew * dts
        dBw = xs @ dSs.transpose(-1, -2)  # (s, b, H, Q, N)
        grad.B[sl] += (_by_group(dBw, g) * _by_group(w, g).unsqueeze(-1)).sum(3)
        dw = (_by_group(dBw, g) * Bs.unsqueeze(3)).sum(-1).flatten(2, 3)
        grad.dt[sl] += dw * ew
        dww = dw * w
        grad.T[sl] += dww.sum(-1)
        grad.k[sl] -= dww
        _bmm_into(dx[sl], _per_head(Bs, w), dSs, accumulate)  # dx_j (+)= w_j B_j . dS
    return grad


def chunk_scan(dirs, x, chunk_size, tensors: list[DirectionTensors], resets=None):
    """Run the chunked scan on x (b, L, H, P) with chunks of ``chunk_size``.

    ``tensors``: one :class:`DirectionTensors` per direction, in the chunk-major
    layout. ``resets``: per direction, the chunks whose entering state is the
    initial state (or zero) instead of the carry from the chunk visited before:
    the starts of the sequences of a packed batch laid out so that no chunk holds
    two of them. The first chunk visited is always one; None: that one only (one
    sequence). The resets cut a direction's chunks into runs (its sequences).
    Returns (y (b, L, H, P), [final states per direction]), the final states of a
    direction (runs, b, H, N, P): the state leaving each run, in visit order.
    """
    if len(dirs) != 1 and not _is_bidirectional(dirs):
        raise ValueError(f"chunk_scan runs one direction or a strict (lower, upper) pair, got {dirs}")
    nchunks = -(-x.shape[1] // chunk_size)
    if resets is None:
        resets = [set() for _ in dirs]
    # the first chunk visited always starts a run
    resets = tuple(frozenset(r) | ({_visit_order(nchunks, d.lower)[0]} if nchunks else frozenset())
                   for r, d in zip(resets, dirs))
    y, *finals = _ChunkScan.apply(tuple(dirs), chunk_size, resets, x, *_flatten(tensors))
    return y, finals
