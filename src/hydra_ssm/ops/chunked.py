"""The chunked scan core shared by the causal SSD and Hydra, with a hand-written backward.

One call handles one or two *directions* over the same chunked input x:

* a lower (left-to-right) direction: outputs at position i read inputs j < i
  (strict) or j <= i (inclusive), states carried from the first chunk to the last;
* an upper (right-to-left) direction: outputs read inputs j > i, states
  carried from the last chunk to the first.

Chunked layout (c chunks of Q positions, batch b, heads H, groups G):

    x        (b, H, c, Q, P)     value stream
    C, B     (b, G, c, Q, N)     per direction; head h uses group h // (H/G)
    dt       (b, H, c, Q)        per direction, >= 0
    r, k     (b, H, c, Q)        per direction: log row / column decays
    T        (b, H, c)           per direction: log decay across the whole chunk
    init     (b, H, N, P)|None   per direction: state entering the first chunk visited

Every direction is described by the same three log-decays, all <= 0 where they
are used, so nothing overflows for any length or step size:

    inside a chunk   M[i, j] = C_i . B_j * dt_j * exp(r_i - k_j)    (i, j in the triangle)
    chunk state      S       = sum_j exp(T - k_j) dt_j B_j x_j^T     (N x P)
    carried state    H_next  = exp(T) H_prev + S
    across chunks    y_i    += exp(r_i) C_i^T H_prev

The callers (``semiseparable.py``, ``quasiseparable.py``) turn dt and A into
r, k, T with ordinary autograd; this module only does the large matmuls and the
Q x Q elementwise work, in slabs of chunks so that memory stays O(L).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Elements of one (b, H, slab, Q, Q) block processed at a time.
_SLAB_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Direction:
    lower: bool  # True: left to right (outputs read earlier positions)
    strict: bool  # True: the diagonal is excluded


def _triangle(q: int, d: Direction, device) -> torch.Tensor:
    """Boolean (Q, Q) mask of the allowed (i, j) pairs."""
    ones = torch.ones(q, q, dtype=torch.bool, device=device)
    offset = 1 if d.strict else 0
    return ones.tril(-offset) if d.lower else ones.triu(offset)


def _slabs(nchunks: int, per_chunk: int):
    step = max(1, _SLAB_ELEMENTS // max(per_chunk, 1))
    for start in range(0, nchunks, step):
        yield slice(start, min(start + step, nchunks))


def _by_group(t: torch.Tensor, ngroups: int) -> torch.Tensor:
    """(b, H, ...) -> (b, G, H/G, ...) view."""
    return t.view(t.shape[0], ngroups, t.shape[1] // ngroups, *t.shape[2:])


def _decay_block(r, k, tri, dtype):
    """exp(r_i - k_j) on the triangle, 0 elsewhere: (b, H, s, Q, Q) in ``dtype``."""
    e = r.unsqueeze(-1) - k.unsqueeze(-2)
    if e.dtype != dtype:  # float64 log-decays: differences taken before rounding
        e = e.to(dtype)
    e.masked_fill_(~tri, float("-inf"))
    return e.exp_()


def _per_head(t_group: torch.Tensor, scale: torch.Tensor, nheads: int) -> torch.Tensor:
    """(b, G, c, Q, N) * (b, H, c, Q) -> (b, H, c, Q, N): group tensor scaled per head."""
    b, g = t_group.shape[:2]
    out = t_group.unsqueeze(2) * _by_group(scale, g).unsqueeze(-1)
    return out.view(b, nheads, *t_group.shape[2:])


def _carry(S, T, init, lower: bool):
    """Run H_next = exp(T) H_prev + S over chunks; return the state entering each chunk and the last."""
    b, h, c, n, p = S.shape
    decay = torch.exp(T).to(S.dtype).unsqueeze(-1).unsqueeze(-1)  # (b, H, c, 1, 1)
    state = S.new_zeros(b, h, n, p) if init is None else init
    entering = [None] * c
    for ci in (range(c) if lower else range(c - 1, -1, -1)):
        entering[ci] = state
        state = torch.addcmul(S[:, :, ci], decay[:, :, ci], state)
    return torch.stack(entering, dim=2), state


def _diag_matrix(sl, dtype, dirs, dir_tensors, tris, ngroups):
    """Sum over directions of the intra-chunk matrices for chunk slab ``sl``."""
    M = None
    for d, (C, B, dt, r, k, _T, _init) in zip(dirs, dir_tensors):
        Md = _decay_block(r[:, :, sl], k[:, :, sl], tris[d], dtype)
        Md.mul_(dt[:, :, sl].unsqueeze(-2))
        _by_group(Md, ngroups).mul_((C[:, :, sl] @ B[:, :, sl].transpose(-1, -2)).unsqueeze(2))
        M = Md if M is None else M.add_(Md)
    return M


class _ChunkScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dirs, x, *flat):
        # flat: 7 tensors per direction (C, B, dt, r, k, T, init-or-None)
        dir_tensors = [flat[7 * i: 7 * i + 7] for i in range(len(dirs))]
        b, h, c, q, p = x.shape
        g = dir_tensors[0][0].shape[1]
        tris = {d: _triangle(q, d, x.device) for d in dirs}

        y = torch.empty_like(x)
        for sl in _slabs(c, b * h * q * q):
            y[:, :, sl] = _diag_matrix(sl, x.dtype, dirs, dir_tensors, tris, g) @ x[:, :, sl]

        finals = []
        for d, (C, B, dt, r, k, T, init) in zip(dirs, dir_tensors):
            Bw = _per_head(B, torch.exp(T.unsqueeze(-1) - k).to(dt.dtype) * dt, h)  # (b, H, c, Q, N)
            S = Bw.transpose(-1, -2) @ x  # (b, H, c, N, P)
            entering, final = _carry(S, T, init, d.lower)
            y.add_(_per_head(C, torch.exp(r).to(x.dtype), h) @ entering)  # contribution of earlier chunks
            finals.append(final)

        ctx.dirs = dirs
        ctx.has_init = [t[6] is not None for t in dir_tensors]
        ctx.save_for_backward(x, *[t if t is not None else x.new_empty(0) for t in flat])
        return (y, *finals)

    @staticmethod
    def backward(ctx, dy, *dfinals):
        x, *flat = ctx.saved_tensors
        dirs = ctx.dirs
        dir_tensors = []
        for i in range(len(dirs)):
            C, B, dt, r, k, T, init = flat[7 * i: 7 * i + 7]
            dir_tensors.append((C, B, dt, r, k, T, init if ctx.has_init[i] else None))
        b, h, c, q, p = x.shape
        g = dir_tensors[0][0].shape[1]
        hg = h // g
        tris = {d: _triangle(q, d, x.device) for d in dirs}
        dy = dy.contiguous()

        grads = [[torch.zeros_like(C), torch.zeros_like(B), torch.zeros_like(dt), torch.zeros_like(r),
                  torch.zeros_like(k), torch.zeros_like(T), None] for (C, B, dt, r, k, T, _i) in dir_tensors]
        dx = torch.empty_like(x)

        # ---- intra-chunk blocks, slab by slab
        for sl in _slabs(c, b * h * q * q):
            xs, dys = x[:, :, sl], dy[:, :, sl]
            dM = dys @ xs.transpose(-1, -2)  # (b, H, s, Q, Q)
            M = None
            for d, (C, B, dt, r, k, _T, _init), gr in zip(dirs, dir_tensors, grads):
                Cs, Bs, dts = C[:, :, sl], B[:, :, sl], dt[:, :, sl]
                CB = Cs @ Bs.transpose(-1, -2)  # (b, G, s, Q, Q)
                decay = _decay_block(r[:, :, sl], k[:, :, sl], tris[d], x.dtype)
                # value matrix for dx
                Md = decay * dts.unsqueeze(-2)
                _by_group(Md, g).mul_(CB.unsqueeze(2))
                M = Md if M is None else M.add_(Md)
                # K = dM * decay;  KC = K * CB
                K = decay.mul_(dM)
                KC = (_by_group(K, g) * CB.unsqueeze(2)).view_as(K)
                col = KC.sum(-2)  # sum_i KC[i, j]
                gr[2][:, :, sl] += col  # d dt_j (direct)
                gr[3][:, :, sl] += (KC @ dts.unsqueeze(-1)).squeeze(-1)  # d r_i = sum_j KC_ij dt_j
                gr[4][:, :, sl] -= col * dts  # d k_j
                dCB = _by_group(K.mul_(dts.unsqueeze(-2)), g).sum(2)  # (b, G, s, Q, Q)
                gr[0][:, :, sl] += dCB @ Bs
                gr[1][:, :, sl] += dCB.transpose(-1, -2) @ Cs
            dx[:, :, sl] = M.transpose(-1, -2) @ dys

        # ---- across chunks
        for d, (C, B, dt, r, k, T, init), gr, dfinal in zip(dirs, dir_tensors, grads, dfinals):
            n = C.shape[-1]
            ew = torch.exp(T.unsqueeze(-1) - k).to(x.dtype)
            w = ew * dt
            Bw = _per_head(B, w, h)  # (b, H, c, Q, N)
            S = Bw.transpose(-1, -2) @ x
            entering, _ = _carry(S, T, init, d.lower)
            er = torch.exp(r).to(x.dtype)
            Ce = _per_head(C, er, h)  # (b, H, c, Q, N)
            # y += Ce @ entering
            dCe = dy @ entering.transpose(-1, -2)  # (b, H, c, Q, N)
            d_entering = Ce.transpose(-1, -2) @ dy  # (b, H, c, N, P)
            gr[0] += (_by_group(dCe, g) * _by_group(er, g).unsqueeze(-1)).sum(2)
            gr[3] += (dCe * Ce).sum(-1)
            # reverse of the carry
            decay = torch.exp(T).to(x.dtype)
            state_grad = torch.zeros_like(entering[:, :, 0]) if dfinal is None else dfinal
            dS = [None] * c
            for ci in (range(c - 1, -1, -1) if d.lower else range(c)):
                dS[ci] = state_grad
                state_grad = torch.addcmul(d_entering[:, :, ci], decay[:, :, ci, None, None], state_grad)
            if init is not None:
                gr[6] = state_grad
            dS = torch.stack(dS, dim=2)  # gradient w.r.t. the state leaving each chunk
            gr[5] += decay * (dS * entering).sum((-1, -2))  # H_next = exp(T) H_prev + S
            # S = Bw^T x
            dx += Bw @ dS
            dBw = x @ dS.transpose(-1, -2)  # (b, H, c, Q, N)
            gr[1] += (_by_group(dBw, g) * _by_group(w, g).unsqueeze(-1)).sum(2)
            dw = (_by_group(dBw, g) * B.unsqueeze(2)).sum(-1).view_as(w)
            gr[2] += dw * ew
            dww = dw * w
            gr[5] += dww.sum(-1)
            gr[4] -= dww

        flat_grads = [t for gr in grads for t in gr]
        return (None, dx, *flat_grads)


# Largest |log decay| inside a chunk for which float32 log-decays are exact enough
# (absolute error ~ 2^-24 * 256 = 1.5e-5 in the exponent).
_FLOAT32_LOG_DECAY_LIMIT = 256.0


def log_decays(dt: torch.Tensor, A: torch.Tensor, d: Direction, dtype: torch.dtype):
    """Row, column and chunk log-decays (r, k, T) of one direction.

    dt: (b, H, c, Q) step sizes, A: (H,). For the lower direction
    r_i - k_j = sum_{l=j+1..i-1} dt_l A (strict) or sum_{l=j+1..i} (inclusive);
    for the upper direction r_i - k_j = sum_{l=i+1..j-1} dt_l A. T is the
    chunk's total. The sums are formed in float64 and kept in float64 when a
    chunk's total decay is so large that float32 would round the differences.
    """
    log_a = dt.double() * A.double()[:, None, None]
    cs = torch.cumsum(log_a, dim=-1)  # sum over chunk start .. i
    ecs = cs - log_a  # sum over chunk start .. i-1
    total = cs[..., -1]
    if d.lower:
        r, k = (ecs if d.strict else cs), cs
    else:
        tot = total.unsqueeze(-1)
        r, k = tot - cs, tot - (ecs if d.strict else cs)
    if dtype != torch.float64 and (torch.compiler.is_compiling() or float(-total.detach().min()) <= _FLOAT32_LOG_DECAY_LIMIT):
        r, k, total = r.to(dtype), k.to(dtype), total.to(dtype)
    return r, k, total


def chunk_scan(dirs, x, dir_tensors):
    """Run the chunked scan. ``dir_tensors``: one (C, B, dt, r, k, T, init) tuple per direction.

    Returns (y, [final state per direction]) with states in (b, H, N, P).
    """
    flat = [t for tensors in dir_tensors for t in tensors]
    y, *finals = _ChunkScan.apply(tuple(dirs), x, *flat)
    return y, finals
