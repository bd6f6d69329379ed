"""Row-tiled quadratic mixing ``y = M x`` with ``M`` generated tile by tile.

For matrix classes whose entries are cheap closed forms of per-position
features (Vandermonde, Cauchy), ``M`` is never stored: the forward pass builds
one block of ``tile`` rows at a time, and the hand-written backward rebuilds
the same block and accumulates the gradients of x and of the features, so
both passes use O(L * tile) memory on top of the inputs.

A *kind* provides two static methods on batched, head-major layouts
(q: (B, H, T, D) rows of the tile, k: (B, H, L, D), positions as float
vectors)::

    block(q_t, k, rows, cols, const) -> (B, H, T, L)
    block_grad(q_t, k, rows, cols, const, dM) -> (dq_t (B, H, T, D), dk (B, H, L, D))
"""

from __future__ import annotations

import torch

# elements of one (B, H, T, L) block; bounds the transient memory of a tile
BLOCK_BUDGET = 1 << 22


def tile_rows(batch: int, nheads: int, length: int, tile: int | None) -> int:
    if tile is not None:
        if not isinstance(tile, int) or tile <= 0:
            raise ValueError(f"tile must be a positive integer, got {tile!r}")
        return tile
    return max(1, min(length, BLOCK_BUDGET // max(1, batch * nheads * length)))


class _TiledMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, const, tile, x, q, k):
        # x (B, H, L, P); q, k (B, H, L, D); all in the working dtype
        length = x.shape[2]
        pos = torch.arange(length, device=x.device, dtype=x.dtype)
        y = torch.empty_like(x)
        for r0 in range(0, length, tile):
            r1 = min(length, r0 + tile)
            M = kind.block(q[:, :, r0:r1], k, pos[r0:r1], pos, const)
            y[:, :, r0:r1] = M @ x
        ctx.kind, ctx.const, ctx.tile = kind, const, tile
        ctx.save_for_backward(x, q, k)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, q, k = ctx.saved_tensors
        kind, const, tile = ctx.kind, ctx.const, ctx.tile
        length = x.shape[2]
        pos = torch.arange(length, device=x.device, dtype=x.dtype)
        need_x, need_q, need_k = ctx.needs_input_grad[3:6]
        dx = torch.zeros_like(x) if need_x else None
        dq = torch.zeros_like(q) if need_q else None
        dk = torch.zeros_like(k) if need_k else None
        gy = gy.contiguous()
        for r0 in range(0, length, tile):
            r1 = min(length, r0 + tile)
            q_t, g_t = q[:, :, r0:r1], gy[:, :, r0:r1]
            if need_x:
                M = kind.block(q_t, k, pos[r0:r1], pos, const)
                dx += M.transpose(-1, -2) @ g_t
                del M
            if need_q or need_k:
                dM = g_t @ x.transpose(-1, -2)  # (B, H, T, L)
                dq_t, dk_t = kind.block_grad(q_t, k, pos[r0:r1], pos, const, dM)
                if need_q:
                    dq[:, :, r0:r1] = dq_t
                if need_k:
                    dk += dk_t
        return None, None, None, dx, dq, dk


def tiled_mix(kind, const, x, q, k, tile: int | None = None) -> torch.Tensor:
    """``y = M x`` for x (B, L, H, P), q, k (B, L, H, D) or (L, H, D); M from ``kind``.

    Works in float32 (float64 if any input is float64); returns x's dtype.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, seqlen, nheads, headdim), got shape {tuple(x.shape)}")
    b, l, h, _ = x.shape
    for name, t in (("q", q), ("k", k)):
        if t.dim() not in (3, 4) or t.shape[-3:-1] != (l, h) or (t.dim() == 4 and t.shape[0] not in (1, b)):
            raise ValueError(f"{name} must be (seqlen, nheads, dim) or (batch, seqlen, nheads, dim) matching x's "
                             f"(batch, seqlen, nheads) = {(b, l, h)}, got {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last dimension, got {q.shape[-1]} and {k.shape[-1]}")
    work = torch.float64 if torch.float64 in (x.dtype, q.dtype, k.dtype) else torch.float32

    def head_major(t):
        t = t[None] if t.dim() == 3 else t
        return t.to(work).expand(b, -1, -1, -1).transpose(1, 2).contiguous()

    y = _TiledMix.apply(kind, const, tile_rows(b, h, l, tile), head_major(x), head_major(q), head_major(k))
    return y.transpose(1, 2).to(x.dtype)
