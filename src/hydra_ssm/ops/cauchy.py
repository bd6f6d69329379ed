"""Cauchy mixing, per head::

    M[t, l] = sum_d 1 / (q[t, d] + k[l, d] + tol)

with positive q, k. The fast path is tiled (:mod:`._tiled`): quadratic time,
O(L * tile) memory, hand-written backward.

Layout: x (B, L, H, P); q, k (B, L, H, D) or (L, H, D).
"""

from __future__ import annotations

import torch

from ._tiled import tiled_mix

DEFAULT_TOL = 1e-8


class _CauchyKind:
    @staticmethod
    def block(q_t, k, rows, cols, tol):
        M = None
        for d in range(q_t.shape[-1]):
            term = 1.0 / (q_t[..., d, None] + k[..., None, :, d] + tol)
            M = term if M is None else M + term
        return M

    @staticmethod
    def block_grad(q_t, k, rows, cols, tol, dM):
        dq = torch.empty_like(q_t)
        dk = torch.empty_like(k)
        for d in range(q_t.shape[-1]):
            g = dM * (q_t[..., d, None] + k[..., None, :, d] + tol).reciprocal().square()
            dq[..., d] = -g.sum(-1)
            dk[..., d] = -g.sum(-2)
        return dq, dk


def cauchy_matrix(q: torch.Tensor, k: torch.Tensor, tol: float = DEFAULT_TOL) -> torch.Tensor:
    """The explicit (B, H, L, L) matrix (q, k as (B, L, H, D) or (L, H, D))."""
    q = q[None] if q.dim() == 3 else q
    k = k[None] if k.dim() == 3 else k
    return (1.0 / (q.transpose(1, 2)[:, :, :, None] + k.transpose(1, 2)[:, :, None] + tol)).sum(-1)


def cauchy_ref(x, q, k, tol: float = DEFAULT_TOL):
    """Reference: explicit matrix, float64."""
    M = cauchy_matrix(q.double(), k.double(), tol)
    return torch.einsum("bhij,bjhp->bihp", M, x.double()).to(x.dtype)


def cauchy_mix(x, q, k, tol: float = DEFAULT_TOL, tile: int | None = None):
    """Fast path: tiled, O(L^2 D (H P)) time, O(L * tile) memory for forward and backward."""
    return tiled_mix(_CauchyKind, float(tol), x, q, k, tile)
