"""Conversions between the public layout (B, L, H, P) and the chunk-major layout (c, B, H, Q, P)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def num_chunks(seqlen: int, chunk_size: int) -> int:
    return -(-seqlen // chunk_size)


def to_chunks(t: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(B, L, H, *rest) -> (c, B, H, Q, *rest), zero-padding L up to c * Q.

    Chunk-major, so that any range of chunks is one contiguous block.
    """
    b, l = t.shape[:2]
    pad = num_chunks(l, chunk_size) * chunk_size - l
    if pad:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    t = t.view(b, -1, chunk_size, *t.shape[2:])  # (B, c, Q, H, *rest)
    return t.permute(1, 0, 3, 2, *range(4, t.dim())).contiguous()


def from_chunks(t: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(c, B, H, Q, *rest) -> (B, L, H, *rest)."""
    c, b, h, q = t.shape[:4]
    t = t.permute(1, 0, 3, 2, *range(4, t.dim())).reshape(b, c * q, h, *t.shape[4:])
    return t[:, :seqlen]


def check_chunk_size(chunk_size) -> int:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size
