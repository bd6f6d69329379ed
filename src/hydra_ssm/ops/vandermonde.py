"""Vandermonde (cosine) mixing.

Symmetric-Vandermonde form, per head, positions t, l = 0..L-1::

    M[t, l] = sum_d cos(2 pi q[t, d] l) + sign * cos(2 pi k[l, d] t)

(``sign = -1`` for the data-dependent mixer, ``+1`` for the learned one.)
The fast path is tiled (:mod:`._tiled`): quadratic time, O(L * tile) memory,
hand-written backward.

The DFT form ``M[t, l] = cos(2 pi t l / n)`` (t, l < L <= n) is the real part
of a length-n DFT, computed by FFT in O(n log n): :func:`dft_cos_mix`.

Layout: x (B, L, H, P); q, k (B, L, H, D) or (L, H, D).
"""

from __future__ import annotations

import math

import torch

from ._tiled import tiled_mix

TWO_PI = 2 * math.pi


class _VandermondeKind:
    @staticmethod
    def block(q_t, k, rows, cols, sign):
        M = None
        for d in range(q_t.shape[-1]):
            term = torch.cos(TWO_PI * q_t[..., d, None] * cols) + sign * torch.cos(TWO_PI * k[..., None, :, d] * rows[:, None])
            M = term if M is None else M + term
        return M

    @staticmethod
    def block_grad(q_t, k, rows, cols, sign, dM):
        dq = torch.empty_like(q_t)
        dk = torch.empty_like(k)
        wc, wr = TWO_PI * cols, TWO_PI * rows[:, None]
        for d in range(q_t.shape[-1]):
            dq[..., d] = -(dM * torch.sin(q_t[..., d, None] * wc) * wc).sum(-1)
            dk[..., d] = -sign * (dM * torch.sin(k[..., None, :, d] * wr) * wr).sum(-2)
        return dq, dk


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
    M = vandermonde_matrix(q.double(), k.double(), sign)
    return torch.einsum("bhij,bjhp->bihp", M, x.double()).to(x.dtype)


def vandermonde_mix(x, q, k, sign: float = -1.0, tile: int | None = None):
    """Fast path: tiled, O(L^2 D (H P)) time, O(L * tile) memory for forward and backward."""
    return tiled_mix(_VandermondeKind, float(sign), x, q, k, tile)


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
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, seqlen, nheads, headdim), got shape {tuple(x.shape)}")
    length = x.shape[1]
    if n < length:
        raise ValueError(f"the DFT size n={n} must be at least the sequence length {length}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    # rfft gives the non-negative frequencies; cos is even, so frequency t and n - t agree
    f = torch.fft.rfft(x.to(work), n=n, dim=1).real  # (B, n//2+1, H, P)
    t = torch.arange(length, device=x.device)
    idx = torch.minimum(t, n - t)
    return f[:, idx].to(x.dtype)
