"""Rotating padded rows so that each row's valid run starts at position 0 (and back)."""

from __future__ import annotations

import torch


def rotation(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask -> (B,) index of each row's first valid token (0 for rows without one)."""
    length = mask.shape[1]
    idx = torch.arange(length, device=mask.device)
    first = torch.where(mask, idx, length).amin(1)
    return torch.where(first == length, torch.zeros_like(first), first)


def roll_rows(t: torch.Tensor, shift: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``out[b, i] = t[b, (i + shift[b]) % L]`` along ``dim`` (batch is dim 0)."""
    length = t.shape[dim]
    idx = (torch.arange(length, device=t.device)[None] + shift[:, None]) % length  # (B, L)
    shape = [t.shape[0]] + [1] * (t.dim() - 1)
    shape[dim] = length
    return t.gather(dim, idx.view(shape).expand_as(t))
