"""Gated RMSNorm ``rmsnorm(x) * weight * silu(z)`` as Triton kernels, forward and backward.

The same function as :func:`hydra_ssm.mixers.norm.gated_rms_norm_ref`: rows of width d (every leading
dimension of x is a row), normalised in float32 (float64 when an input is float64), output in x's dtype.
The forward saves only the per-row ``1/rms``; the backward recomputes the rest from x, z and it. The
weight's gradient is summed per program and the partial sums are added in torch, so it is deterministic.
Both directions are ``torch.library`` custom ops (fake tensors and autograd registered), so the function
can be compiled with ``torch.compile``.

Importing this module imports triton. Kernels run on CUDA tensors, or on CPU tensors in Triton's
interpreter (``TRITON_INTERPRET=1`` set before the import).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._checks import check_number
from .._shapes import check_tensor, compute_dtype
from ._launch import check_kernel_device, partial_programs, tl_compute_dtype

# Widest row a program holds in registers at once (64 KiB of the input dtype).
MAX_ROW_BYTES = 65536


@triton.jit
def _gated_rms_norm_fwd_kernel(X, Z, W, OUT, RSTD, stride_x, stride_z, stride_out, d, eps,
                               HAS_Z: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    """One program per row: OUT[row] = X[row] * rstd * W (* silu(Z[row])), RSTD[row] = 1 / rms(X[row])."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < d
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(COMPUTE)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / d + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(COMPUTE)
    out = x * rstd * w
    if HAS_Z:
        z = tl.load(Z + row * stride_z + cols, mask=mask, other=0.0).to(COMPUTE)
        out = out * z / (1.0 + tl.exp(-z))
    tl.store(RSTD + row, rstd)
    tl.store(OUT + row * stride_out + cols, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _gated_rms_norm_bwd_kernel(X, Z, W, RSTD, DOUT, DX, DZ, DW_PART, stride_x, stride_z, stride_dout, stride_dx,
                               stride_dz, rows, d, ROWS_PER_PROGRAM: tl.constexpr,
                               HAS_Z: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    """Each program takes ``ROWS_PER_PROGRAM`` consecutive rows and writes DX (and DZ) of each, and its
    partial sum of the weight's gradient over them to DW_PART[program]."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    w = tl.load(W + cols, mask=cols < d, other=0.0).to(COMPUTE)
    dw = tl.zeros([BLOCK], dtype=COMPUTE)
    for i in range(ROWS_PER_PROGRAM):
        row = pid.to(tl.int64) * ROWS_PER_PROGRAM + i
        # the last program's range may pass the last row: masked loads give zeros, which add nothing to dw
        mask = (cols < d) & (row + 0 * cols < rows)  # both sides vectors: Triton 3.9's interpreter needs it
        rstd = tl.load(RSTD + row, mask=row < rows, other=0.0)
        n = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(COMPUTE) * rstd  # normalised x
        g = tl.load(DOUT + row * stride_dout + cols, mask=mask, other=0.0).to(COMPUTE)
        if HAS_Z:
            z = tl.load(Z + row * stride_z + cols, mask=mask, other=0.0).to(COMPUTE)
            sig = 1.0 / (1.0 + tl.exp(-z))
            dz = g * n * w * sig * (1.0 + z * (1.0 - sig))  # silu'(z) = sig (1 + z (1 - sig))
            tl.store(DZ + row * stride_dz + cols, dz.to(DZ.dtype.element_ty), mask=mask)
            g = g * z * sig  # gradient w.r.t. rmsnorm(x) * weight
        dw += g * n
        dn = g * w
        # d/dx of x * rstd: rstd (dn - n mean(dn n))
        dx = (dn - n * (tl.sum(dn * n, axis=0) / d)) * rstd
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PART + pid.to(tl.int64) * d + cols, dw, mask=cols < d)


def _row_warps(d: int) -> int:
    """Warps of a program that holds one row of width d: about 256 columns per warp, 1 to 8."""
    return min(max(triton.next_power_of_2(d) // 256, 1), 8)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """(rows, d) with unit stride along d (a copy only if needed); rows may be any stride apart."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


@torch.library.custom_op("hydra_ssm::gated_rms_norm_fwd", mutates_args=())
def _gated_rms_norm_fwd(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, z (rows, d), weight (d,) -> out (rows, d) in x's dtype, rstd (rows,) in the compute dtype."""
    rows, d = x.shape
    cdt = compute_dtype(x, z, weight)
    out = torch.empty((rows, d), dtype=x.dtype, device=x.device)
    rstd = torch.empty((rows,), dtype=cdt, device=x.device)
    if rows == 0:
        return out, rstd
    x = _unit_stride(x)
    z = None if z is None else _unit_stride(z)
    _gated_rms_norm_fwd_kernel[(rows,)](
        x, x if z is None else z, weight.contiguous(), out, rstd, x.stride(0), 0 if z is None else z.stride(0),
        out.stride(0), d, eps, HAS_Z=z is not None, COMPUTE=tl_compute_dtype(cdt), BLOCK=triton.next_power_of_2(d),
        num_warps=_row_warps(d))
    return out, rstd


@_gated_rms_norm_fwd.register_fake
def _(x, z, weight, eps):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty((x.shape[0],), dtype=compute_dtype(x, z, weight)))


@torch.library.custom_op("hydra_ssm::gated_rms_norm_bwd", mutates_args=())
def _gated_rms_norm_bwd(dout: torch.Tensor, x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor,
                        rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dout, x, z (rows, d), weight (d,), rstd (rows,) -> dx (rows, d), dz (rows, d; (0,) when z is None),
    dweight (d,), each in its input's dtype."""
    rows, d = x.shape
    dx = torch.empty((rows, d), dtype=x.dtype, device=x.device)
    dz = torch.empty((rows, d) if z is not None else (0,), dtype=x.dtype if z is None else z.dtype, device=x.device)
    if rows == 0:
        return dx, dz, torch.zeros_like(weight)
    rows_per_program = triton.next_power_of_2(triton.cdiv(rows, partial_programs(rows, x.device)))
    programs = triton.cdiv(rows, rows_per_program)
    dw_part = torch.empty((programs, d), dtype=rstd.dtype, device=x.device)
    x, dout = _unit_stride(x), _unit_stride(dout)
    z = None if z is None else _unit_stride(z)
    _gated_rms_norm_bwd_kernel[(programs,)](
        x, x if z is None else z, weight.contiguous(), rstd, dout, dx, dx if z is None else dz, dw_part,
        x.stride(0), 0 if z is None else z.stride(0), dout.stride(0), dx.stride(0), 0 if z is None else dz.stride(0),
        rows, d, ROWS_PER_PROGRAM=rows_per_program, HAS_Z=z is not None, COMPUTE=tl_compute_dtype(rstd.dtype),
        BLOCK=triton.next_power_of_2(d), num_warps=_row_warps(d))
    return dx, dz, dw_part.sum(0).to(weight.dtype)


@_gated_rms_norm_bwd.register_fake
def _(dout, x, z, weight, rstd):
    dz = torch.empty_like(z, memory_format=torch.contiguous_format) if z is not None else x.new_empty((0,))
    return torch.empty_like(x, memory_format=torch.contiguous_format), dz, torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, z, weight, eps = inputs
    ctx.save_for_backward(x, z, weight, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, dout, drstd):
    x, z, weight, rstd = ctx.saved_tensors
    dx, dz, dweight = _gated_rms_norm_bwd(dout, x, z, weight, rstd)
    return dx, (None if z is None else dz), dweight, None


_gated_rms_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def gated_rms_norm_triton(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor,
                          eps: float) -> torch.Tensor:
    """``rmsnorm(x) * weight * silu(z)`` over the last dimension, by Triton kernels.

    x: (..., d), any float dtype, any strides; z: None or x's shape; weight: (d,). Normalised in float32
    (float64 when an input is float64); returns (..., d) in x's dtype. Differentiable in x, z and weight.
    Rows wider than 64 KiB of x's dtype are refused (a row is held in registers).
    """
    check_tensor(x, "x")
    check_tensor(weight, "weight", x.device)
    if z is not None:
        check_tensor(z, "z", x.device)
    check_number("eps", eps, low=0, low_open=True, what="a positive number")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have shape (..., d) with d >= 1, got {tuple(x.shape)}")
    d = x.shape[-1]
    if d * x.element_size() > MAX_ROW_BYTES:
        raise ValueError(f"x's rows must be at most {MAX_ROW_BYTES // x.element_size()} wide in {x.dtype} "
                         f"for the Triton gated RMSNorm, got d = {d}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have x's shape {tuple(x.shape)} (or be None), got {tuple(z.shape)}")
    if weight.shape != (d,):
        raise ValueError(f"weight must have shape (d,) = {(d,)}, got {tuple(weight.shape)}")
    check_kernel_device("x", x)
    out, _ = _gated_rms_norm_fwd(x.reshape(-1, d), None if z is None else z.reshape(-1, d), weight, float(eps))
    return out.reshape(x.shape)
