"""Low-rank mixing: ``y = (Q K^T) x`` per head, computed as ``Q (K^T x)`` in O(L).

Layout: x (B, L, H, P); q, k (B, L, H, D) or (L, H, D) (shared by the batch).
"""

from __future__ import annotations

import torch

from ._shapes import check_tensor


def _batched(t: torch.Tensor) -> torch.Tensor:
    return t[None] if t.dim() == 3 else t


def _check(x, q, k):
    for name, t in (("x", x), ("q", q), ("k", k)):
        check_tensor(t, name, None if name == "x" else x.device)
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, seqlen, nheads, headdim), got shape {tuple(x.shape)}")
    for name, t in (("q", q), ("k", k)):
        if t.dim() not in (3, 4) or t.shape[-3:-1] != x.shape[1:3]:
            raise ValueError(f"{name} must be (seqlen, nheads, dim) or (batch, seqlen, nheads, dim) matching x's "
                             f"(seqlen, nheads) = {tuple(x.shape[1:3])}, got {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last dimension, got {q.shape[-1]} and {k.shape[-1]}")


def low_rank_matrix(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The explicit (B, H, L, L) matrix ``M[i, j] = q_i . k_j``."""
    return torch.einsum("bihd,bjhd->bhij", _batched(q), _batched(k))


def low_rank_ref(x, q, k):
    """Reference: explicit matrix, float64."""
    _check(x, q, k)
    M = low_rank_matrix(q.double(), k.double())
    return torch.einsum("bhij,bjhp->bihp", M, x.double()).to(x.dtype)


def low_rank_mix(x, q, k):
    """Fast path by associativity: ``Q (K^T x)``, O(L H D P) time, no L x L tensor."""
    _check(x, q, k)
    kv = torch.einsum("bjhd,bjhp->bhdp", _batched(k).to(x.dtype), x)
    return torch.einsum("bihd,bhdp->bihp", _batched(q).to(x.dtype), kv)
