"""Gated RMSNorm in plain PyTorch, with a hand-written backward that keeps memory low."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import work_dtype


def gated_rms_norm_ref(x, z, weight, eps: float):
    """``rmsnorm(x) * weight * silu(z)`` written with autograd ops (the reference)."""
    dtype = x.dtype
    cdt = work_dtype(dtype)
    x = x.to(cdt)
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(cdt)
    if z is not None:
        out = out * F.silu(z.to(cdt))
    return out.to(dtype)


class _GatedRMSNorm(torch.autograd.Function):
    """Saves x, z and the per-row 1/rms only; recomputes the rest in backward."""

    @staticmethod
    def forward(ctx, x, z, weight, eps):
        cdt = work_dtype(x.dtype)
        xf = x.to(cdt)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        out = xf * rstd * weight.to(cdt)
        if z is not None:
            out.mul_(F.silu(z.to(cdt)))
        ctx.save_for_backward(x, z, weight, rstd)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, dout):
        # In-place where possible: this runs while every activation of the layer is alive.
        x, z, weight, rstd = ctx.saved_tensors
        cdt = rstd.dtype
        w = weight.to(cdt)
        n = x.to(cdt) * rstd  # normalised x
        dout = dout.to(cdt)
        dz = None
        if z is not None:
            zf = z.to(cdt)
            sig = torch.sigmoid(zf)
            dz = torch.rsub(sig, 1).mul_(zf).add_(1).mul_(sig)  # silu'(z) = sig (1 + z (1 - sig))
            dz.mul_(dout).mul_(n).mul_(w)
            dout = sig.mul_(zf).mul_(dout)  # gradient w.r.t. rmsnorm(x) * weight: dout * silu(z)
            del zf
        dweight = (dout * n).sum(dim=tuple(range(n.dim() - 1)))
        dn = dout.mul_(w) if z is not None else dout * w
        proj = torch.einsum("...d,...d->...", dn, n).div_(n.shape[-1]).unsqueeze(-1)
        dx = n.mul_(proj).neg_().add_(dn).mul_(rstd)  # rstd (dn - n mean(dn n))
        return dx.to(x.dtype), (None if dz is None else dz.to(z.dtype)), dweight.to(weight.dtype), None


class GatedRMSNorm(nn.Module):
    """``rmsnorm(x) * weight * silu(z)`` (normalise before gating), computed in
    float32 (or float64 for float64 inputs).

    Parameter names match the gated RMSNorm of the reference Hydra layer
    (``weight`` only).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return _GatedRMSNorm.apply(x, z, self.weight, self.eps)
