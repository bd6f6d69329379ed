"""Helpers shared by the mixers (Hydra, the matrix mixers, attention): written once here."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._checks import check_choice, check_positive_ints, check_sequence_input, tracing, value_checks_enabled

ACTIVATIONS = ("silu", "swish")


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Compute dtype of the sensitive steps (scans, softplus, explicit matrices): float64 for
    float64, float32 for every lower precision."""
    return torch.promote_types(dtype, torch.float32)


def check_layer_sizes(d_model, expand, headdim, d_conv, activation) -> None:
    """The arguments every conv-and-heads layer (Hydra, the matrix mixers) shares."""
    check_positive_ints(d_model=d_model, d_conv=d_conv, expand=expand, headdim=headdim)
    if d_conv % 2 == 0:
        raise ValueError(f"d_conv must be odd so the non-causal convolution keeps the length, got {d_conv}")
    if (expand * d_model) % headdim != 0:
        raise ValueError(f"expand * d_model ({expand} * {d_model} = {expand * d_model}) must be divisible by headdim ({headdim})")
    check_choice("activation", activation, ACTIVATIONS)


def in_proj_and_conv(d_model, d_in_proj, conv_dim, d_conv, conv_init, bias, conv_bias, factory) -> tuple[nn.Linear, nn.Conv1d]:
    """The input projection (d_model -> d_in_proj) and the depthwise, non-causal conv over its first
    ``conv_dim`` channels after the gate (odd ``d_conv``, zero padding keeps the length); ``conv_init``
    (or None) draws the conv weights uniformly in [-conv_init, conv_init]."""
    in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory)
    conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv // 2, bias=conv_bias,
                       **factory)
    if conv_init is not None:
        nn.init.uniform_(conv1d.weight, -conv_init, conv_init)
    return in_proj, conv1d


def dt_bias(nheads: int, dt_min: float, dt_max: float, dt_init_floor: float, factory: dict) -> nn.Parameter:
    """(nheads,) ``softplus^{-1}(dt)`` for dt drawn log-uniformly in [dt_min, dt_max] (at least dt_init_floor),
    so that ``softplus(dt_raw + dt_bias)`` starts in that range."""
    dt = torch.exp(torch.rand(nheads, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    param = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
    param._no_weight_decay = True
    return param


def decay_rate(A_log: torch.Tensor) -> torch.Tensor:
    """``A = -exp(A_log)`` (H,), in :func:`work_dtype`."""
    return -torch.exp(A_log.to(work_dtype(A_log.dtype)))


def token_diagonal(x: torch.Tensor, fc_D: nn.Linear, D: torch.Tensor) -> torch.Tensor:
    """Per-token diagonal of the quasiseparable matrix, ``fc_D(x_t) + D``: x (B, L, H, P) -> (B, L, H)."""
    return F.linear(rearrange(x, "b l h p -> b l (h p)"), fc_D.weight, D.to(x.dtype))


def key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L) valid tokens -> (B, 1, 1, L) keys each query may read. A row with no
    valid token reads every key, so it stays finite (its outputs are zeroed)."""
    if mask is None:
        return None
    return (mask | ~mask.any(1, keepdim=True))[:, None, None, :]


def check_padded_input(u: torch.Tensor, d_model: int, attention_mask, dtype: torch.dtype) -> torch.Tensor | None:
    """:func:`check_sequence_input` for a layer whose parameters have ``dtype``, and a mask (returned as
    bool, or None) with one contiguous run of valid tokens per row."""
    mask = check_sequence_input(u, d_model, attention_mask, dtype=dtype)
    if mask is not None:
        check_contiguous_mask(mask)
    return mask


def check_contiguous_mask(mask: torch.Tensor) -> None:
    """Valid tokens must form one contiguous run per row (left and/or right padding): a value check,
    run as ``value_checks_enabled`` (``hydra_ssm._checks``) says."""
    if not value_checks_enabled(mask):
        return
    count = mask.sum(1)
    idx = torch.arange(mask.shape[1], device=mask.device)
    first = torch.where(mask, idx, mask.shape[1]).amin(1)
    last = torch.where(mask, idx, -1).amax(1)
    ok = (count == 0) | (last - first + 1 == count)
    if not bool(ok.all()):
        raise ValueError("attention_mask must mark one contiguous run of valid tokens per row (padding on the left and/or right)")


class _ConvSiLU(torch.autograd.Function):
    """``silu(depthwise conv1d(x))`` that keeps only a (B, C, L) copy of its input: backward recomputes the
    convolution.

    x (B, L, C) channels-last (a view is fine). The output is (B, L, C) with the convolution's (B, C, L)
    layout underneath, as ``F.silu(conv1d(x.transpose(1, 2))).transpose(1, 2)`` gives. The copy is what the
    depthwise convolution needs anyway (it runs several times faster on it than on the transposed view),
    and keeping it instead of x lets the tensor x is a view of (in Hydra, the whole in_proj output) go as
    soon as its other readers are done. Neither the pre-activation nor the output is kept for backward,
    and the SiLU derivative is taken on contiguous tensors.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        xt = x.transpose(1, 2).contiguous()
        pre = F.conv1d(xt, weight, bias, padding=padding, groups=weight.shape[0])
        ctx.padding = padding
        ctx.save_for_backward(xt, weight, bias)
        return F.silu(pre).transpose(1, 2)

    @staticmethod
    def backward(ctx, dout):
        xt, weight, bias = ctx.saved_tensors
        channels = weight.shape[0]
        pre = F.conv1d(xt, weight, bias, padding=ctx.padding, groups=channels)  # (B, C, L), recomputed
        sig = torch.sigmoid(pre)
        # silu'(pre) = sig (1 + pre (1 - sig)), times the incoming gradient: the pre-activation's gradient
        dpre = torch.rsub(sig, 1).mul_(pre).add_(1).mul_(sig).mul_(dout.transpose(1, 2))
        del pre, sig
        need = ctx.needs_input_grad
        dx, dweight, dbias = torch.ops.aten.convolution_backward(
            dpre, xt, weight, None if bias is None else [channels], [1], [ctx.padding], [1], False, [0], channels,
            [need[0], need[1], bias is not None and need[2]])
        return (None if dx is None else dx.transpose(1, 2)), dweight, dbias, None


def conv_silu(x: torch.Tensor, conv1d: nn.Conv1d) -> torch.Tensor:
    """``silu(conv1d(x))`` for x (B, L, C) channels-last, through the layer's depthwise ``conv1d`` (zero padding
    keeps the length). While autograd records, the recomputing :class:`_ConvSiLU` (less memory, faster
    backward); under autocast or tracing (export), and without gradients, the plain modules."""
    plain = not torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type) or tracing()
    if plain or not (x.requires_grad or conv1d.weight.requires_grad):
        return F.silu(conv1d(x.transpose(1, 2))).transpose(1, 2)
    return _ConvSiLU.apply(x, conv1d.weight, conv1d.bias, conv1d.padding[0])
