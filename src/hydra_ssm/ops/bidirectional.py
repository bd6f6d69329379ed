"""Hydra's construction, shared by every bidirectional mixer built from a causal one.

A causal linear-recurrent mixer computes ``y = M x`` with M lower triangular
(diagonal included). Its quasiseparable extension is::

    y = shift(M_f x) + flip(shift(M_b flip(x))) + D * x

where ``M_f`` is the causal mixer with the forward direction's parameters,
``M_b`` the same causal mixer run on the reversed sequence with the backward
direction's parameters, and ``shift`` moves every output one position later
(row 0 gets zero). The lower triangle of the result is ``M_f`` moved down one
row, the upper triangle is ``M_b`` reversed and moved right one column, and
the diagonal is D alone: each position reads the others through the two
scans and itself through D. Without the shift (``shift=False``, an ablation:
two causal passes added) the diagonal is M_f's, M_b's and D's together.

:func:`combine_directions` builds the outputs from the two causal outputs,
:func:`combine_matrices` the explicit (B, H, L, L) matrix from the two causal
matrices. Both take the backward direction's result as the causal mixer
returned it on the reversed sequence (not flipped back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_later(y: torch.Tensor) -> torch.Tensor:
    """(B, L, ...) -> (B, L, ...): position i gets y[i - 1], position 0 gets zero."""
    pad = [0, 0] * (y.dim() - 2) + [1, 0]
    return F.pad(y, pad)[:, :-1]


def diagonal_term(x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor | None:
    """``D * x`` for x (B, L, H, P) and D None, (H,) or (B, L, H)."""
    if D is None:
        return None
    return x * D.to(x.dtype).unsqueeze(-1)


def combine_directions(y_fwd: torch.Tensor, y_bwd_reversed: torch.Tensor, x: torch.Tensor,
                       D: torch.Tensor | None = None, shift: bool = True) -> torch.Tensor:
    """``shift(y_fwd) + flip(shift(y_bwd_reversed)) + D * x``; with ``shift=False``
    ``y_fwd + flip(y_bwd_reversed) + D * x`` (each position also reads itself through both scans).

    y_fwd: (B, L, H, P) the causal outputs of the forward direction; y_bwd_reversed: (B, L, H, P)
    the causal outputs of the backward direction on the reversed sequence; x: (B, L, H, P) the
    values; D: None, (H,) or (B, L, H).
    """
    if shift:
        y_fwd, y_bwd_reversed = shift_later(y_fwd), shift_later(y_bwd_reversed)
    y = y_fwd + y_bwd_reversed.flip(1)
    diag = diagonal_term(x.to(y.dtype), D)
    return y if diag is None else y + diag


def combine_matrices(M_fwd: torch.Tensor, M_bwd_reversed: torch.Tensor, D: torch.Tensor | None = None,
                     shift: bool = True) -> torch.Tensor:
    """The explicit (B, H, L, L) matrix of :func:`combine_directions` (same ``shift``) from the two causal
    matrices (B, H, L, L) (the backward one on the reversed sequence) and D (None, (H,) or (B, L, H))."""
    if shift:  # rows moved down one: row i reads M[i - 1]
        M_fwd, M_bwd_reversed = (F.pad(M, (0, 0, 1, 0))[..., :-1, :] for M in (M_fwd, M_bwd_reversed))
    Q = M_fwd + M_bwd_reversed.flip(-1).flip(-2)
    if D is None:
        return Q
    b, h, l, _ = Q.shape
    diag = D.to(Q.dtype).expand(b, l, h) if D.dim() == 1 else D.to(Q.dtype)
    return Q + torch.diag_embed(diag.transpose(1, 2))
