"""Gated RMSNorm in plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedRMSNorm(nn.Module):
    """``rmsnorm(x) * weight * silu(z)`` (normalise before gating), computed in float32 (or float64 for float64 inputs).

    Parameter names match the gated RMSNorm of the reference Hydra layer
    (``weight`` only).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        cdt = torch.promote_types(dtype, torch.float32)
        x = x.to(cdt)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(cdt)
        if z is not None:
            x = x * F.silu(z.to(cdt))
        return x.to(dtype)
