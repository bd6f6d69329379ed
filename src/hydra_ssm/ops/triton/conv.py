"""Hydra's depthwise, non-causal convolution over the sequence followed by SiLU, as Triton kernels.

``silu(conv1d(x))`` for x (B, L, C) channels-last, read in place (no transposes), with the weight
(C, 1, K) as ``nn.Conv1d(C, C, K, groups=C, padding=K // 2)`` stores it (odd K: the output keeps the
length) and an optional bias (C,). Computed in float32 (float64 when an input is float64), output in
x's dtype. The backward recomputes the pre-activation; the weight's and bias' gradients are summed per
program and the partial sums added in torch (deterministic). Both directions are ``torch.library``
custom ops, so the function can be compiled with ``torch.compile``.

Importing this module imports triton. Kernels run on CUDA tensors, or on CPU tensors in Triton's
interpreter (``TRITON_INTERPRET=1`` set before the import).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._shapes import check_tensor, compute_dtype
from ._launch import block_size, check_kernel_device, tl_compute_dtype

# Tile of (positions, channels) one program computes.
BLOCK_L = 64
BLOCK_C = 64


@triton.jit
def _sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _preactivation(X, W, BIAS, ls, cs, L, C, stride_xl, stride_xc, stride_wc, stride_wk,
                   HAS_BIAS: tl.constexpr, K: tl.constexpr, COMPUTE: tl.constexpr,
                   BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """conv1d(x) + bias at positions ``ls`` and channels ``cs`` of one sequence X: (BLOCK_L, BLOCK_C)."""
    cmask = cs < C
    acc = tl.zeros([BLOCK_L, BLOCK_C], dtype=COMPUTE)
    if HAS_BIAS:
        acc += tl.load(BIAS + cs, mask=cmask, other=0.0).to(COMPUTE)[None, :]
    for k in tl.static_range(K):
        # output l reads input l + k - K // 2; outside [0, L) the zero padding
        src = ls + (k - K // 2)
        m = ((src >= 0) & (src < L))[:, None] & cmask[None, :]
        xv = tl.load(X + src[:, None] * stride_xl + cs[None, :] * stride_xc, mask=m, other=0.0).to(COMPUTE)
        wk = tl.load(W + cs * stride_wc + k * stride_wk, mask=cmask, other=0.0).to(COMPUTE)
        acc += xv * wk[None, :]
    return acc


@triton.jit
def _conv_silu_fwd_kernel(X, W, BIAS, OUT, L, C, stride_xb, stride_xl, stride_xc, stride_wc, stride_wk,
                          HAS_BIAS: tl.constexpr, K: tl.constexpr, COMPUTE: tl.constexpr,
                          BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (l-tile, b, c-tile): OUT[b, tile] = silu(conv(X[b]) + bias); OUT (B, L, C) contiguous."""
    b = tl.program_id(1).to(tl.int64)
    ls = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    pre = _preactivation(X + b * stride_xb, W, BIAS, ls, cs, L, C, stride_xl, stride_xc, stride_wc, stride_wk,
                         HAS_BIAS, K, COMPUTE, BLOCK_L, BLOCK_C)
    out = pre * _sigmoid(pre)
    m = (ls < L)[:, None] & (cs < C)[None, :]
    tl.store(OUT + b * L * C + ls[:, None] * C + cs[None, :], out.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _conv_silu_bwd_pre_kernel(X, W, BIAS, DOUT, DPRE, L, C, stride_xb, stride_xl, stride_xc, stride_wc, stride_wk,
                              stride_db, stride_dl, stride_dc,
                              HAS_BIAS: tl.constexpr, K: tl.constexpr, COMPUTE: tl.constexpr,
                              BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (l-tile, b, c-tile): DPRE = DOUT * silu'(pre), the pre-activation recomputed;
    DPRE (B, L, C) contiguous in the compute dtype."""
    b = tl.program_id(1).to(tl.int64)
    ls = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    pre = _preactivation(X + b * stride_xb, W, BIAS, ls, cs, L, C, stride_xl, stride_xc, stride_wc, stride_wk,
                         HAS_BIAS, K, COMPUTE, BLOCK_L, BLOCK_C)
    m = (ls < L)[:, None] & (cs < C)[None, :]
    g = tl.load(DOUT + b * stride_db + ls[:, None] * stride_dl + cs[None, :] * stride_dc, mask=m, other=0.0)
    sig = _sigmoid(pre)
    dpre = g.to(COMPUTE) * sig * (1.0 + pre * (1.0 - sig))  # silu'(p) = sig (1 + p (1 - sig))
    tl.store(DPRE + b * L * C + ls[:, None] * C + cs[None, :], dpre, mask=m)


@triton.jit
def _conv_silu_bwd_kernel(X, W, DPRE, DX, DW_PART, DB_PART, L, C, n_ltiles, stride_xb, stride_xl, stride_xc,
                          stride_wc, stride_wk, K: tl.constexpr, COMPUTE: tl.constexpr,
                          BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (l-tile, b, c-tile), p = b * n_ltiles + l-tile:
    DX[b, l] = sum_k DPRE[b, l - k + K // 2] * W[:, k]                  (DX (B, L, C) contiguous),
    DW_PART[p, k] = sum over the tile of DPRE[b, l] * X[b, l + k - K // 2]   (DW_PART (P, K, C)),
    DB_PART[p] = sum over the tile of DPRE[b, l]                          (DB_PART (P, C))."""
    b = tl.program_id(1).to(tl.int64)
    part = b * n_ltiles + tl.program_id(0)
    ls = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    lmask = ls < L
    m = lmask[:, None] & cmask[None, :]
    dpre_b = DPRE + b * L * C
    x_b = X + b * stride_xb
    dpre = tl.load(dpre_b + ls[:, None] * C + cs[None, :], mask=m, other=0.0)
    tl.store(DB_PART + part * C + cs, tl.sum(dpre, axis=0), mask=cmask)
    dx = tl.zeros([BLOCK_L, BLOCK_C], dtype=COMPUTE)
    for k in tl.static_range(K):
        shift = k - K // 2
        wk = tl.load(W + cs * stride_wc + k * stride_wk, mask=cmask, other=0.0).to(COMPUTE)
        # input l fed output l - shift through tap k
        dst = ls - shift
        md = ((dst >= 0) & (dst < L))[:, None] & cmask[None, :]
        dx += tl.load(dpre_b + dst[:, None] * C + cs[None, :], mask=md, other=0.0) * wk[None, :]
        # output l read input l + shift through tap k
        src = ls + shift
        ms = ((src >= 0) & (src < L) & lmask)[:, None] & cmask[None, :]
        xv = tl.load(x_b + src[:, None] * stride_xl + cs[None, :] * stride_xc, mask=ms, other=0.0).to(COMPUTE)
        tl.store(DW_PART + (part * K + k) * C + cs, tl.sum(dpre * xv, axis=0), mask=cmask)
    tl.store(DX + b * L * C + ls[:, None] * C + cs[None, :], dx.to(DX.dtype.element_ty), mask=m)


def _grid(batch: int, length: int, channels: int, block_l: int, block_c: int) -> tuple[int, int, int]:
    """(l-tiles, batch, c-tiles): the l-tiles first, the axis with no 65535 limit on CUDA."""
    return triton.cdiv(length, block_l), batch, triton.cdiv(channels, block_c)


@torch.library.custom_op("hydra_ssm::depthwise_conv_silu_fwd", mutates_args=())
def _conv_silu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (B, L, C), weight (C, 1, K), bias (C,) or None -> silu(conv(x)) (B, L, C) contiguous, x's dtype."""
    batch, length, channels = x.shape
    out = torch.empty((batch, length, channels), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    cdt = compute_dtype(x, weight, bias)
    block_l, block_c = block_size(length, BLOCK_L), block_size(channels, BLOCK_C)
    _conv_silu_fwd_kernel[_grid(batch, length, channels, block_l, block_c)](
        x, weight, weight if bias is None else bias.contiguous(), out, length, channels, *x.stride(), weight.stride(0),
        weight.stride(2), HAS_BIAS=bias is not None, K=weight.shape[2], COMPUTE=tl_compute_dtype(cdt),
        BLOCK_L=block_l, BLOCK_C=block_c)
    return out


@_conv_silu_fwd.register_fake
def _(x, weight, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("hydra_ssm::depthwise_conv_silu_bwd", mutates_args=())
def _conv_silu_bwd(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dout, x (B, L, C), weight (C, 1, K), bias (C,) or None -> dx (B, L, C) in x's dtype, dweight (C, 1, K)
    in weight's dtype, dbias (C,) in bias' dtype (weight's when bias is None)."""
    batch, length, channels = x.shape
    ksize = weight.shape[2]
    dx = torch.empty((batch, length, channels), dtype=x.dtype, device=x.device)
    bias_dtype = weight.dtype if bias is None else bias.dtype
    if dx.numel() == 0:
        return dx, torch.zeros_like(weight), torch.zeros((channels,), dtype=bias_dtype, device=x.device)
    cdt = compute_dtype(x, weight, bias)
    block_l, block_c = block_size(length, BLOCK_L), block_size(channels, BLOCK_C)
    grid = _grid(batch, length, channels, block_l, block_c)
    # dL/d(pre-activation), kept in the compute dtype for the second kernel's shifted reads
    dpre = torch.empty((batch, length, channels), dtype=cdt, device=x.device)
    _conv_silu_bwd_pre_kernel[grid](
        x, weight, weight if bias is None else bias.contiguous(), dout, dpre, length, channels, *x.stride(),
        weight.stride(0), weight.stride(2), *dout.stride(), HAS_BIAS=bias is not None, K=ksize,
        COMPUTE=tl_compute_dtype(cdt), BLOCK_L=block_l, BLOCK_C=block_c)
    parts = grid[0] * batch
    dw_part = torch.empty((parts, ksize, channels), dtype=cdt, device=x.device)
    db_part = torch.empty((parts, channels), dtype=cdt, device=x.device)
    _conv_silu_bwd_kernel[grid](
        x, weight, dpre, dx, dw_part, db_part, length, channels, grid[0], *x.stride(), weight.stride(0),
        weight.stride(2), K=ksize, COMPUTE=tl_compute_dtype(cdt), BLOCK_L=block_l, BLOCK_C=block_c)
    # (K, C) -> (C, 1, K), contiguous like the fake's
    dweight = dw_part.sum(0).transpose(0, 1).contiguous().view(channels, 1, ksize).to(weight.dtype)
    return dx, dweight, db_part.sum(0).to(bias_dtype)


@_conv_silu_bwd.register_fake
def _(dout, x, weight, bias):
    bias_dtype = weight.dtype if bias is None else bias.dtype
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(weight, memory_format=torch.contiguous_format),
            x.new_empty((x.shape[2],), dtype=bias_dtype))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = _conv_silu_bwd(dout, x, weight, bias)
    return dx, dweight, (None if bias is None else dbias)


_conv_silu_fwd.register_autograd(_backward, setup_context=_setup_context)


def depthwise_conv_silu_triton(xBC: torch.Tensor, weight: torch.Tensor,
                               bias: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(conv1d(xBC))`` over the sequence, channel by channel, zero padding K // 2 on both sides.

    xBC: (B, L, C), any float dtype, any strides (a slice of a wider projection is read in place);
    weight: (C, 1, K) with K odd, as ``nn.Conv1d(C, C, K, groups=C)`` stores it; bias: (C,) or None.
    Returns (B, L, C), contiguous, in xBC's dtype; equal to
    ``F.silu(F.conv1d(xBC.transpose(1, 2), weight, bias, padding=K // 2, groups=C)).transpose(1, 2)``.
    Differentiable in xBC, weight and bias.
    """
    check_tensor(xBC, "xBC")
    check_tensor(weight, "weight", xBC.device)
    if bias is not None:
        check_tensor(bias, "bias", xBC.device)
    if xBC.dim() != 3:
        raise ValueError(f"xBC must have shape (batch, seqlen, channels), got {tuple(xBC.shape)}")
    channels = xBC.shape[2]
    if weight.dim() != 3 or weight.shape[:2] != (channels, 1) or weight.shape[2] == 0:
        raise ValueError(f"weight must have shape (channels, 1, kernel_size) = ({channels}, 1, K) with K >= 1, "
                         f"got {tuple(weight.shape)}")
    if weight.shape[2] % 2 == 0:
        raise ValueError(f"weight's kernel size must be odd so the non-causal convolution keeps the length, "
                         f"got {weight.shape[2]}")
    if bias is not None and bias.shape != (channels,):
        raise ValueError(f"bias must have shape (channels,) = {(channels,)} (or be None), got {tuple(bias.shape)}")
    check_kernel_device("xBC", xBC)
    return _conv_silu_fwd(xBC, weight, bias)
