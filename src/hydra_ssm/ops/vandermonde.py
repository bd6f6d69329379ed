"""Vandermonde (cosine) mixing.

Symmetric-Vandermonde form, per head, positions t, l = 0..L-1::

    M[t, l] = sum_d cos(2 pi q[t, d] l) + sign * cos(2 pi k[l, d] t)

(``sign = -1`` for the data-dependent mixer, ``+1`` for the learned one.)
Both terms are "cosine rows" matrices ``G(w)[r, c] = sum_d cos(2 pi w[r, d] c)``:
``M = G(q) + sign * G(k)^T``, so ``y = G(q) x + sign * G(k)^T x``.

The fast path (:func:`vandermonde_mix`) never evaluates ``L^2 D`` cosines. With
columns written as ``c = c0 + J a + j`` (``j < J``), the angle-addition formula
``cos(u + v) = cos u cos v - sin u sin v`` gives, for each row r,

    G[r, c0 + J a + j] = sum_d cos(A_rda) cos(B_rdj) - sin(A_rda) sin(B_rdj)
                       = ([cos A, -sin A] @ [cos B; sin B])[a, j]

with ``A = 2 pi w c0 + 2 pi w J a`` and ``B = 2 pi w j``: a batched matmul of
``(C/J, 2D) @ (2D, J)`` per row. The sines and cosines of ``B`` and of the
group offsets ``2 pi w J a`` are computed once per row tile, those of
``2 pi w c0`` once per block, and ``A`` follows by angle addition, so a row
costs ``O(D (C/J + J))`` sines and cosines instead of ``L D``. The gradient of ``w`` uses
``sin(u + v) = sin u cos v + cos u sin v`` the same way. Blocks are tiled as in
:mod:`._tiled` (memory O(L) plus one block, hand-written backward that
regenerates blocks); the products with ``x`` are matmuls.

The DFT form ``M[t, l] = cos(2 pi t l / n)`` (t, l < L <= n) is the real part
of a length-n DFT, computed by FFT in O(n log n): :func:`dft_cos_mix`.

Layout: x (B, L, H, P); q, k (B, L, H, D) or (L, H, D).
"""

from __future__ import annotations

import math

import torch

from ._shapes import check_tensor, compute_dtype
from ._tiled import check_mix_args, from_head_major, head_major, spans, tile_sizes

TWO_PI = 2 * math.pi


def _split(cols: int) -> tuple[int, int]:
    """Inner width J (about sqrt(cols)) and the block width rounded up to a multiple of J."""
    inner = max(1, int(round(math.sqrt(cols))))
    return inner, inner * -(-cols // inner)


class _Rows:
    """Cosine rows of one row tile: ``w`` (N, T, D) angular frequencies (2 pi * theta),
    blocks of up to ``groups`` column groups of width ``inner``."""

    def __init__(self, w, inner, groups):
        self.w = w
        beta = w[..., None] * torch.arange(inner, device=w.device, dtype=w.dtype)  # (N, T, D, J)
        self.inner_cs = torch.cat([beta.cos(), beta.sin()], dim=-2)  # (N, T, 2D, J)
        # group offsets J a, shared by every block of the row tile: A = w c0 + w J a
        gam = w[:, :, None, :] * (inner * torch.arange(groups, device=w.device, dtype=w.dtype))[:, None]
        self.gam_c, self.gam_s = gam.cos(), gam.sin()  # (N, T, groups, D)

    def outer(self, c0, c1):
        """cos A, sin A (N, T, C/J, D) of the block's column groups starting at c0."""
        inner = self.inner_cs.shape[-1]
        groups = -(-(c1 - c0) // inner)
        w0 = (self.w * c0)[:, :, None, :]
        c, s = w0.cos(), w0.sin()
        gc, gs = self.gam_c[:, :, :groups], self.gam_s[:, :, :groups]
        return c * gc - s * gs, s * gc + c * gs

    def block(self, alpha, ncols):
        """G[:, :, c0:c0 + ncols] (N, T, ncols) from the outer angles' (cos, sin)."""
        a = torch.cat([alpha[0], -alpha[1]], dim=-1)  # (N, T, C/J, 2D)
        g = torch.matmul(a, self.inner_cs)  # (N, T, C/J, J)
        return g.flatten(-2)[..., :ncols]

    def grad_w(self, alpha, dG_pos):
        """d/dw of sum(dG * G) given dG_pos = dG * column position (N, T, ncols)."""
        cos_a, sin_a = alpha
        groups, inner = cos_a.shape[-2], self.inner_cs.shape[-1]
        pad = groups * inner - dG_pos.shape[-1]
        W = torch.nn.functional.pad(dG_pos, (0, pad)).unflatten(-1, (groups, inner))  # (N, T, C/J, J)
        Z = torch.matmul(W, self.inner_cs.transpose(-1, -2))  # (N, T, C/J, 2D): [sum_j W cos B | sum_j W sin B]
        d = cos_a.shape[-1]
        return -(sin_a * Z[..., :d] + cos_a * Z[..., d:]).sum(-2)


class _CosRowsMix(torch.autograd.Function):
    """out = G(theta) a (transpose=False) or G(theta)^T a (transpose=True); a (N, L, P), theta (N, L, D)."""

    @staticmethod
    def forward(ctx, a, theta, transpose, rows, cols):
        n, length, _ = a.shape
        inner, cols = _split(cols)
        w = TWO_PI * theta
        out = torch.zeros_like(a)
        for r0, r1 in spans(length, rows):
            R = _Rows(w[:, r0:r1], inner, cols // inner)
            for c0, c1 in spans(length, cols):
                G = R.block(R.outer(c0, c1), c1 - c0)
                if transpose:
                    out[:, c0:c1].baddbmm_(G.transpose(1, 2), a[:, r0:r1])
                else:
                    out[:, r0:r1].baddbmm_(G, a[:, c0:c1])
        ctx.transpose, ctx.rows, ctx.cols, ctx.inner = transpose, rows, cols, inner
        ctx.save_for_backward(a, theta)
        return out

    @staticmethod
    def backward(ctx, gout):
        a, theta = ctx.saved_tensors
        transpose, rows, cols, inner = ctx.transpose, ctx.rows, ctx.cols, ctx.inner
        n, length, _ = a.shape
        need_a, need_t = ctx.needs_input_grad[:2]
        gout = gout.contiguous()
        w = TWO_PI * theta
        da = torch.zeros_like(a) if need_a else None
        dw = torch.zeros_like(theta) if need_t else None
        pos = torch.arange(length, device=a.device, dtype=a.dtype)
        for r0, r1 in spans(length, rows):
            R = _Rows(w[:, r0:r1], inner, cols // inner)
            for c0, c1 in spans(length, cols):
                alpha = R.outer(c0, c1)
                if need_a:
                    G = R.block(alpha, c1 - c0)
                    if transpose:
                        da[:, r0:r1].baddbmm_(G, gout[:, c0:c1])
                    else:
                        da[:, c0:c1].baddbmm_(G.transpose(1, 2), gout[:, r0:r1])
                    del G
                if need_t:
                    if transpose:
                        dG = torch.bmm(a[:, r0:r1], gout[:, c0:c1].transpose(1, 2))
                    else:
                        dG = torch.bmm(gout[:, r0:r1], a[:, c0:c1].transpose(1, 2))
                    dw[:, r0:r1] += R.grad_w(alpha, dG.mul_(pos[c0:c1]))
        return da, (TWO_PI * dw if need_t else None), None, None, None


def vandermonde_matrix(q: torch.Tensor, k: torch.Tensor, sign: float = -1.0) -> torch.Tensor:
    """The explicit (B, H, L, L) matrix (q, k as (B, L, H, D) or (L, H, D))."""
    q = q[None] if q.dim() == 3 else q
    k = k[None] if k.dim() == 3 else k
    pos = torch.arange(q.shape[1], device=q.device, dtype=q.dtype)
    qt = torch.cos(TWO_PI * torch.einsum("bthd,l->bhtld", q, pos)).sum(-1)
    kt = torch.cos(TWO_PI * torch.einsum("blhd,t->bhtld", k, pos)).sum(-1)
    return qt + sign * kt


def vandermonde_ref(x, q, k, sign: float = -1.0):
    """Reference: explicit matrix, float64."""
    check_mix_args(x, q, k)
    M = vandermonde_matrix(q.double(), k.double(), sign)
    return torch.einsum("bhij,bjhp->bihp", M, x.double()).to(x.dtype)


def vandermonde_mix(x, q, k, sign: float = -1.0, tile: int | None = None, col_tile: int | None = None):
    """Fast path: O(L^2 H (D + P)) time as batched matmuls, O(L D) sines and cosines;
    memory O(L) plus one block of ``tile x col_tile`` per (batch, head).

    Works in float32 (float64 if any input is float64); returns x's dtype.
    """
    check_mix_args(x, q, k)
    if x.numel() == 0:  # batch, length, heads or head dim 0: the reference gives the empty output
        return vandermonde_ref(x, q, k, sign)
    b, length, h, _ = x.shape
    work = compute_dtype(x, q, k)
    rows, cols = tile_sizes(b * h, length, tile, col_tile)
    xh = head_major(x, b, work)
    y = _CosRowsMix.apply(xh, head_major(q, b, work), False, rows, cols)
    y_k = _CosRowsMix.apply(xh, head_major(k, b, work), True, rows, cols)
    return from_head_major(y + float(sign) * y_k, b, x.dtype)


def dft_cos_matrix(length: int, n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``cos(2 pi t l / n)`` for t, l < length, (length, length)."""
    pos = torch.arange(length, device=device, dtype=torch.float64)
    return torch.cos(TWO_PI * torch.outer(pos, pos) / n).to(dtype)


def dft_cos_ref(x: torch.Tensor, n: int) -> torch.Tensor:
    """Reference: explicit matrix, float64."""
    M = dft_cos_matrix(x.shape[1], n, x.device, torch.float64)
    return torch.einsum("tl,blhp->bthp", M, x.double()).to(x.dtype)


def dft_cos_mix(x: torch.Tensor, n: int) -> torch.Tensor:
    """Fast path: ``y_t = sum_l cos(2 pi t l / n) x_l`` = Re(DFT_n(x))[t], O(n log n)."""
    check_tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, seqlen, nheads, headdim), got shape {tuple(x.shape)}")
    length = x.shape[1]
    if n < length:
        raise ValueError(f"the DFT size n={n} must be at least the sequence length {length}")
    if x.numel() == 0:
        return dft_cos_ref(x, n)
    work = compute_dtype(x)
    # rfft gives the non-negative frequencies; cos is even, so frequency t and n - t agree
    f = torch.fft.rfft(x.to(work), n=n, dim=1).real  # (B, n//2+1, H, P)
    t = torch.arange(length, device=x.device)
    idx = torch.minimum(t, n - t)
    return f[:, idx].to(x.dtype)
