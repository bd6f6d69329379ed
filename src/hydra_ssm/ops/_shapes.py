"""Argument checks for the scan operators (layout [B, L, H, P]).

The policy, shared by every fast path and every reference of the causal SSD and
of Hydra (``semiseparable_*``, ``quasiseparable_*``), checked before any
computation:

* shapes: a ``ValueError`` naming the argument and the expected shape;
* types: every tensor argument must be a floating-point tensor (``TypeError``
  otherwise; an integer ``x`` would give a truncated integer output). Floating
  dtypes may be mixed: the computation runs in float64 if any input is float64,
  else in float32, and the output has x's dtype;
* devices: every tensor on x's device (``ValueError``);
* step sizes: ``dt`` (``dt_fwd``, ``dt_bwd``) must be >= 0 (``ValueError``):
  dt = 0 means "skip this position" and is exact, gradients included. Checking
  costs one host synchronisation per call, so it is a value check: by default
  on CPU tensors only, on other devices when asked for
  (``hydra_ssm.set_validation(True)``), never while compiling, exporting or
  tracing (the values are not known then);
* empty inputs: batch 0 or length 0 give an empty output of the right shape, and
  gradients (zeros, of every input's shape);
* packed batches (``cu_seqlens``, :func:`check_cu_seqlens`): a 1-D integer
  tensor of offsets (n + 1,) starting at 0, non-decreasing (empty sequences are
  allowed and give nothing), ending at the packed length; the inputs then have
  batch 1. Reading the offsets is one host synchronisation; packed batches cannot
  be traced (their lengths are data);
* other values are not checked: NaN or inf in the inputs propagate to the output
  (and to the gradients). The ops are pure functions, and a finiteness check
  would cost a pass over every input and a host synchronisation; the layers
  (``hydra_ssm.mixers``) check their inputs instead.
"""

from __future__ import annotations

import torch

from .._checks import tracing, value_checks_enabled


def check_tensor(t, name: str, device: torch.device | None = None) -> None:
    """A floating-point tensor (on ``device`` if given)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
                        f"got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on x's device {device}, got {t.device}")


def check_ssm_args(x, dt, A, B, C, *, suffix: str = "") -> tuple[int, int, int, int, int, int]:
    """Check x (B,L,H,P), dt (B,L,H), A (H,), B and C (B,L,G,N): types, devices and shapes (C None: B only).

    ``suffix`` is appended to the names of dt, B and C in messages ("_fwd" -> "dt_fwd").
    Returns (batch, seqlen, nheads, headdim, ngroups, dstate).
    """
    dt_name, b_name, c_name = "dt" + suffix, "B" + suffix, "C" + suffix
    check_tensor(x, "x")
    for name, t in ((dt_name, dt), ("A", A), (b_name, B), (c_name, C)):
        if t is not None or name != c_name:
            check_tensor(t, name, x.device)
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, seqlen, nheads, headdim), got {tuple(x.shape)}")
    b, l, h, p = x.shape
    if dt.shape != (b, l, h):
        raise ValueError(f"{dt_name} must have shape (batch, seqlen, nheads) = {(b, l, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must have shape (nheads,) = {(h,)}, got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, l):
        raise ValueError(f"{b_name} must have shape (batch, seqlen, ngroups, dstate) with batch, seqlen = {(b, l)}, "
                         f"got {tuple(B.shape)}")
    g, n = B.shape[2], B.shape[3]
    if C is not None and C.shape != B.shape:
        raise ValueError(f"{c_name} must have the shape of {b_name} {tuple(B.shape)}, got {tuple(C.shape)}")
    if g == 0 or h % g != 0:
        raise ValueError(f"nheads ({h}) must be divisible by ngroups ({g}) of {b_name}/{c_name}")
    return b, l, h, p, g, n


def check_step_sizes(**dts: torch.Tensor) -> None:
    """Every dt >= 0, with one host synchronisation for all of them; a value check (run as
    ``value_checks_enabled`` in ``hydra_ssm._checks`` says: by default on CPU tensors only).

    NaN is not negative: it passes, like every other NaN (see the module notes).
    """
    checked = {name: t for name, t in dts.items() if value_checks_enabled(t)}
    if not checked:
        return
    negative = torch.stack([(t < 0).any() for t in checked.values()]).tolist()
    for (name, t), bad in zip(checked.items(), negative):
        if bad:
            raise ValueError(f"{name} must be >= 0 (a step size; 0 skips a position), "
                             f"got a minimum of {float(t.detach().min()):.6g}")


def check_state(state, b, h, p, n, name: str, device: torch.device | None = None):
    if state is None:
        return None
    check_tensor(state, name, device)
    if state.dim() == 3:
        state = state.unsqueeze(0).expand(b, -1, -1, -1)
    if state.shape != (b, h, p, n):
        raise ValueError(f"{name} must have shape (batch, nheads, headdim, dstate) = {(b, h, p, n)} or "
                         f"(nheads, headdim, dstate), got {tuple(state.shape)}")
    return state


def check_D(D, b, l, h, device: torch.device | None = None):
    """D may be None, (H,) or (B, L, H)."""
    if D is None:
        return None
    check_tensor(D, "D", device)
    if D.shape == (b, l, h) or D.shape == (h,):  # (B, L, H) first: no comparison of batch with nheads when tracing
        return D
    raise ValueError(f"D must have shape (nheads,) = {(h,)} or (batch, seqlen, nheads) = {(b, l, h)}, "
                     f"got {tuple(D.shape)}")


def compute_dtype(*tensors) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def expand_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(B, L, G, N) -> (B, L, H, N): head h uses group h // (H / G)."""
    g = t.shape[2]
    return t.repeat_interleave(nheads // g, dim=2) if g != nheads else t


def split_states(initial_states, b, h, p, n, device: torch.device | None = None):
    """Hydra's initial states: None, one tensor for both directions, or a (forward, backward) pair.

    Returns (forward, backward), each None or (B, H, P, N).
    """
    if isinstance(initial_states, (tuple, list)):
        if len(initial_states) != 2:
            raise ValueError(f"initial_states must be a tensor or a (forward, backward) pair, "
                             f"got a sequence of {len(initial_states)}")
        fwd, bwd = initial_states
    else:
        fwd = bwd = initial_states
    return (check_state(fwd, b, h, p, n, "initial_states (forward)", device),
            check_state(bwd, b, h, p, n, "initial_states (backward)", device))


def check_hydra_args(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, initial_states):
    """All of Hydra's arguments (see :func:`check_ssm_args`); dt_fwd, dt_bwd >= 0.

    Returns ((batch, seqlen, nheads, headdim, ngroups, dstate), (forward state, backward state)).
    """
    b, l, h, p, g, n = check_ssm_args(x, dt_fwd, A, B_fwd, C_fwd, suffix="_fwd")
    check_ssm_args(x, dt_bwd, A, B_bwd, C_bwd, suffix="_bwd")
    if B_bwd.shape != B_fwd.shape:
        raise ValueError(f"B_bwd must have the shape of B_fwd {tuple(B_fwd.shape)}, got {tuple(B_bwd.shape)}")
    check_D(D, b, l, h, x.device)
    states = split_states(initial_states, b, h, p, n, x.device)
    check_step_sizes(dt_fwd=dt_fwd, dt_bwd=dt_bwd)
    return (b, l, h, p, g, n), states


def check_cu_seqlens(cu_seqlens, batch: int, total: int) -> list[int]:
    """The sequence lengths of a packed batch, from its offsets (checked).

    ``cu_seqlens``: a 1-D integer tensor (n + 1,) on any device, as in flash-attention
    and mamba_ssm: sequence i holds packed positions cu_seqlens[i] .. cu_seqlens[i+1] - 1.
    It must start at 0, never decrease (an empty sequence is allowed) and end at
    ``total``, the packed length of inputs of batch 1. Returns the n lengths.
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"cu_seqlens must be a torch.Tensor of offsets, got {type(cu_seqlens).__name__}")
    if cu_seqlens.is_floating_point() or cu_seqlens.is_complex() or cu_seqlens.dtype == torch.bool:
        raise TypeError(f"cu_seqlens must be an integer tensor (int32 or int64 offsets), got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() == 0:
        raise ValueError(f"cu_seqlens must have shape (num_sequences + 1,), got {tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ValueError(f"with cu_seqlens the inputs must be one packed row, shape (1, total, ...), got batch {batch}")
    if tracing():
        raise ValueError("cu_seqlens cannot be traced (torch.compile, torch.export, ONNX): the sequence lengths are "
                         "data; trace a padded batch with an attention mask instead")
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {offsets[0]}")
    lengths = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    if any(n < 0 for n in lengths):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {offsets[:8]}{' ...' if len(offsets) > 8 else ''}")
    if offsets[-1] != total:
        raise ValueError(f"cu_seqlens must end at the packed length {total} (the inputs' seqlen), got {offsets[-1]}")
    return lengths
