"""Input checks shared by the mixers: clear ValueErrors instead of crashes deep inside."""

from __future__ import annotations

import torch


def exporting() -> bool:
    """True while ``torch.export`` or ``torch.onnx.export`` traces the code: the dynamo ONNX exporter runs
    torch.export, the TorchScript-based one the JIT tracer."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def tracing() -> bool:
    """True while a graph is traced (``torch.compile``, ``torch.export``, ``torch.onnx.export``): checks
    that read tensor values on the host (a sync, and a branch on data) are skipped then."""
    return torch.compiler.is_compiling() or exporting()


def check_sequence_input(
    u: torch.Tensor,
    d_model: int,
    attention_mask: torch.Tensor | None = None,
    *,
    name: str = "u",
    check_finite: bool = True,
) -> torch.Tensor | None:
    """Validate ``u`` of shape (B, L, d_model) and an optional (B, L) mask.

    Returns the mask as a boolean tensor (or None). Raises ValueError naming the
    argument and what was expected.
    """
    if not isinstance(u, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (batch, seqlen, {d_model}), got {type(u).__name__}")
    if u.dim() != 3:
        raise ValueError(f"{name} must have shape (batch, seqlen, {d_model}), got a {u.dim()}-D tensor of shape {tuple(u.shape)}")
    if u.shape[-1] != d_model:
        raise ValueError(f"{name} must have shape (batch, seqlen, {d_model}): last dimension is {u.shape[-1]}, expected d_model={d_model}")
    if u.shape[1] == 0:
        raise ValueError(f"{name} must have at least one position, got shape {tuple(u.shape)}")
    if not u.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {u.dtype}")
    if check_finite and not tracing() and not bool(torch.isfinite(u).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor of shape {tuple(u.shape[:2])}, got {type(attention_mask).__name__}")
    if attention_mask.shape != u.shape[:2]:
        raise ValueError(f"attention_mask must have shape (batch, seqlen) = {tuple(u.shape[:2])}, got {tuple(attention_mask.shape)}")
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        if not tracing() and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must contain only 0 and 1 (or be a bool tensor)")
    elif attention_mask.dtype != torch.bool:
        if not tracing() and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError(f"attention_mask of dtype {attention_mask.dtype} must contain only 0 and 1")
    return attention_mask.to(device=u.device, dtype=torch.bool)
