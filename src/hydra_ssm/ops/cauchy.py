"""Cauchy mixing, per head::

    M[t, l] = sum_d 1 / (q[t, d] + k[l, d] + tol)

with positive q, k. The fast path (:func:`cauchy_mix`) is tiled (see
:mod:`._tiled`): quadratic time, memory O(L) plus one cache-sized block, and a
hand-written backward that regenerates each block. A block is built with a few
in-place elementwise passes per feature into reused buffers; the products with
``x`` and the gradient of ``x`` are matmuls.

Layout: x (B, L, H, P); q, k (B, L, H, D) or (L, H, D).
"""

from __future__ import annotations

import torch

from ._shapes import compute_dtype
from ._tiled import check_mix_args, from_head_major, head_major, spans, tile_sizes

DEFAULT_TOL = 1e-8


def _buffers(n, rows, cols, dtype, device, count):
    return [torch.empty(n * rows * cols, dtype=dtype, device=device) for _ in range(count)]


def _view(buf, n, rows, cols):
    return buf[: n * rows * cols].view(n, rows, cols)


def _fill_block(M, tmp, qT, kT, r0, r1, c0, c1):
    """M[n, i, j] = sum_d 1 / (qT[n, d, r0 + i] + kT[n, d, c0 + j]) (tol is folded into qT)."""
    one = M.new_ones(1, 1, 1)
    for d in range(qT.shape[1]):
        if d == 0:
            torch.add(qT[:, d, r0:r1, None], kT[:, d, None, c0:c1], out=M).reciprocal_()
        else:
            torch.add(qT[:, d, r0:r1, None], kT[:, d, None, c0:c1], out=tmp)
            M.addcdiv_(one, tmp)  # M += 1 / tmp in one pass


class _CauchyMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, q, k, tol, rows, cols):
        # x (N, L, P); q, k (N, L, D); all in the working dtype
        n, length, _ = x.shape
        qT = (q + tol).transpose(1, 2).contiguous()  # (N, D, L)
        kT = k.transpose(1, 2).contiguous()
        y = torch.zeros_like(x)
        mbuf, tbuf = _buffers(n, rows, cols, x.dtype, x.device, 2)
        for r0, r1 in spans(length, rows):
            for c0, c1 in spans(length, cols):
                M, tmp = _view(mbuf, n, r1 - r0, c1 - c0), _view(tbuf, n, r1 - r0, c1 - c0)
                _fill_block(M, tmp, qT, kT, r0, r1, c0, c1)
                y[:, r0:r1].baddbmm_(M, x[:, c0:c1])
        ctx.rows, ctx.cols = rows, cols
        ctx.save_for_backward(x, qT, kT)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, qT, kT = ctx.saved_tensors
        rows, cols = ctx.rows, ctx.cols
        n, length, _ = x.shape
        need_x, need_q, need_k = ctx.needs_input_grad[:3]
        need_f = need_q or need_k
        gy = gy.contiguous()
        dx = torch.zeros_like(x) if need_x else None
        dqT = torch.zeros_like(qT) if need_f else None
        dkT = torch.zeros_like(kT) if need_f else None
        mbuf, tbuf, gbuf = _buffers(n, rows, cols, x.dtype, x.device, 3)
        one = x.new_ones(1, 1, 1)
        minus_ones = x.new_full((n, 1, rows), -1.0)
        for r0, r1 in spans(length, rows):
            g_r = gy[:, r0:r1]
            for c0, c1 in spans(length, cols):
                shape = (n, r1 - r0, c1 - c0)
                M, tmp, dM = _view(mbuf, *shape), _view(tbuf, *shape), _view(gbuf, *shape)
                if not need_f:
                    _fill_block(M, tmp, qT, kT, r0, r1, c0, c1)
                else:
                    torch.bmm(g_r, x[:, c0:c1].transpose(1, 2), out=dM)  # dL/dM of this block
                    neg = minus_ones[:, :, : r1 - r0]
                    for d in range(qT.shape[1]):
                        torch.add(qT[:, d, r0:r1, None], kT[:, d, None, c0:c1], out=tmp)
                        if need_x:
                            torch.reciprocal(tmp, out=M) if d == 0 else M.addcdiv_(one, tmp)
                        torch.div(dM, tmp.square_(), out=tmp)  # dM / (q + k)^2
                        dqT[:, d, r0:r1] -= tmp.sum(-1)
                        dkT[:, d : d + 1, c0:c1].baddbmm_(neg, tmp)  # column sums as a matmul: faster than sum(-2)
                if need_x:
                    dx[:, c0:c1].baddbmm_(M.transpose(1, 2), g_r)
        dq = dqT.transpose(1, 2) if need_q else None
        dk = dkT.transpose(1, 2) if need_k else None
        return dx, dq, dk, None, None, None


def cauchy_matrix(q: torch.Tensor, k: torch.Tensor, tol: float = DEFAULT_TOL) -> torch.Tensor:
    """The explicit (B, H, L, L) matrix (q, k as (B, L, H, D) or (L, H, D))."""
    q = q[None] if q.dim() == 3 else q
    k = k[None] if k.dim() == 3 else k
    return (1.0 / (q.transpose(1, 2)[:, :, :, None] + k.transpose(1, 2)[:, :, None] + tol)).sum(-1)


def cauchy_ref(x, q, k, tol: float = DEFAULT_TOL):
    """Reference: explicit matrix, float64."""
    check_mix_args(x, q, k)
    M = cauchy_matrix(q.double(), k.double(), tol)
    return torch.einsum("bhij,bjhp->bihp", M, x.double()).to(x.dtype)


def cauchy_mix(x, q, k, tol: float = DEFAULT_TOL, tile: int | None = None, col_tile: int | None = None):
    """Fast path: O(L^2 H (D + P)) time; memory O(L) plus one block of ``tile x col_tile``
    rows and columns per (batch, head) (defaults: see :func:`._tiled.tile_sizes`).

    Works in float32 (float64 if any input is float64); returns x's dtype.
    """
    check_mix_args(x, q, k)
    if x.numel() == 0:  # batch, length, heads or head dim 0: the reference gives the empty output
        return cauchy_ref(x, q, k, tol)
    b, length, h, _ = x.shape
    work = compute_dtype(x, q, k)
    rows, cols = tile_sizes(b * h, length, tile, col_tile)
    y = _CauchyMix.apply(head_major(x, b, work), head_major(q, b, work), head_major(k, b, work), float(tol), rows, cols)
    return from_head_major(y, b, x.dtype)
