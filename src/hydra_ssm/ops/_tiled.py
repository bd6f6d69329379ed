"""Shared plumbing of the tiled quadratic mixers (Vandermonde, Cauchy).

These classes apply ``y = M x`` with an ``L x L`` matrix ``M`` per head whose
entries are closed forms of per-position features. ``M`` is never stored: the
forward pass generates one ``(N, T, C)`` block (N = batch * heads, T rows, C
columns) at a time and multiplies it into ``x``; the hand-written backward
regenerates the same blocks and accumulates the gradients of ``x`` and of the
features. Memory is O(L * (features + head dim)) for the inputs and gradients
plus one block of at most :data:`BLOCK_BUDGET` elements and a few buffers of the
same size, independent of L beyond that.

Blocks are two-dimensional so that a block stays cache-sized at any L
(``T`` = :data:`ROW_TILE` rows, ``C`` columns filling the budget); the block
buffers are allocated once per call and reused, so no per-tile allocation (and
no page faulting of fresh memory) happens inside the loops.
"""

from __future__ import annotations

import torch

from ._shapes import check_tensor

#: elements of one (N, T, C) block; bounds the transient memory of a tile
BLOCK_BUDGET = 1 << 20
#: default rows per block
ROW_TILE = 64


def tile_sizes(n: int, length: int, tile: int | None = None, col_tile: int | None = None) -> tuple[int, int]:
    """Rows and columns of one block for ``n`` = batch * heads sequences of ``length``."""
    for name, value in (("tile", tile), ("col_tile", col_tile)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    rows = min(length, tile if tile is not None else ROW_TILE)
    if col_tile is None:
        col_tile = max(1, BLOCK_BUDGET // max(1, n * rows))
        if tile is None and col_tile >= length:  # whole rows fit: take more rows per block
            rows = min(length, max(rows, BLOCK_BUDGET // max(1, n * length)))
    return max(1, rows), max(1, min(length, col_tile))


def check_mix_args(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
    """x (B, L, H, P); q, k (L, H, D) or (B|1, L, H, D); floating point, on x's device (see ``_shapes``)."""
    check_tensor(x, "x")
    check_tensor(q, "q", x.device)
    check_tensor(k, "k", x.device)
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, seqlen, nheads, headdim), got shape {tuple(x.shape)}")
    b, l, h, _ = x.shape
    for name, t in (("q", q), ("k", k)):
        if t.dim() not in (3, 4) or t.shape[-3:-1] != (l, h) or (t.dim() == 4 and t.shape[0] not in (1, b)):
            raise ValueError(f"{name} must be (seqlen, nheads, dim) or (batch, seqlen, nheads, dim) matching x's "
                             f"(batch, seqlen, nheads) = {(b, l, h)}, got {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last dimension, got {q.shape[-1]} and {k.shape[-1]}")


def head_major(t: torch.Tensor, batch: int, work: torch.dtype) -> torch.Tensor:
    """(L, H, D) or (B|1, L, H, D) -> contiguous (B * H, L, D) in ``work``."""
    t = t[None] if t.dim() == 3 else t
    t = t.to(work).expand(batch, -1, -1, -1).transpose(1, 2)
    return t.reshape(-1, t.shape[2], t.shape[3]).contiguous()


def from_head_major(y: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """(B * H, L, P) -> (B, L, H, P) in ``dtype``."""
    n, length, p = y.shape
    return y.view(batch, n // batch, length, p).transpose(1, 2).to(dtype)


def spans(length: int, step: int):
    """(start, stop) pairs covering range(length) in steps of ``step``."""
    return [(s, min(length, s + step)) for s in range(0, length, step)]
