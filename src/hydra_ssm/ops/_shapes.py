"""Argument checks for the functional operators (layout [B, L, H, P])."""

from __future__ import annotations

import torch


def check_ssm_args(x, dt, A, B, C, *, prefix: str = "") -> tuple[int, int, int, int, int, int]:
    """Check shapes of x (B,L,H,P), dt (B,L,H), A (H,), B and C (B,L,G,N).

    Returns (batch, seqlen, nheads, headdim, ngroups, dstate).
    """
    for name, t in (("x", x), (prefix + "dt", dt), ("A", A), (prefix + "B", B), (prefix + "C", C)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, seqlen, nheads, headdim), got {tuple(x.shape)}")
    b, l, h, p = x.shape
    if dt.shape != (b, l, h):
        raise ValueError(f"{prefix}dt must have shape (batch, seqlen, nheads) = {(b, l, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must have shape (nheads,) = {(h,)}, got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, l):
        raise ValueError(f"{prefix}B must have shape (batch, seqlen, ngroups, dstate) with batch, seqlen = {(b, l)}, got {tuple(B.shape)}")
    g, n = B.shape[2], B.shape[3]
    if C.shape != B.shape:
        raise ValueError(f"{prefix}C must have the shape of {prefix}B {tuple(B.shape)}, got {tuple(C.shape)}")
    if g == 0 or h % g != 0:
        raise ValueError(f"nheads ({h}) must be divisible by ngroups ({g}) of {prefix}B/{prefix}C")
    return b, l, h, p, g, n


def check_state(state, b, h, p, n, name: str):
    if state is None:
        return None
    if state.dim() == 3:
        state = state.unsqueeze(0).expand(b, -1, -1, -1)
    if state.shape != (b, h, p, n):
        raise ValueError(f"{name} must have shape (batch, nheads, headdim, dstate) = {(b, h, p, n)} or (nheads, headdim, dstate), got {tuple(state.shape)}")
    return state


def check_D(D, b, l, h):
    """D may be None, (H,) or (B, L, H)."""
    if D is None:
        return None
    if D.shape == (b, l, h) or D.shape == (h,):  # (B, L, H) first: no comparison of batch with nheads when tracing
        return D
    raise ValueError(f"D must have shape (nheads,) = {(h,)} or (batch, seqlen, nheads) = {(b, l, h)}, got {tuple(D.shape)}")


def compute_dtype(*tensors) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def expand_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(B, L, G, N) -> (B, L, H, N): head h uses group h // (H / G)."""
    g = t.shape[2]
    return t.repeat_interleave(nheads // g, dim=2) if g != nheads else t
