"""Shared pieces of the bidirectional recurrent classes (bi_gla, bi_deltanet, bi_complex).

Each is Hydra's construction (``hydra_ssm.ops.bidirectional``) around a causal
linear recurrence: the lower triangle is the recurrence run left to right, the
upper triangle the same recurrence run right to left with its own gates, and
the diagonal is Hydra's per-token ``fc_D(v) + D``. Queries and keys are shared
by the two directions, as the quasiseparable class shares B and C.

Padding needs nothing of its own: the layer right-pads every row and zeroes
the value stream there, so the backward direction enters the valid run with
an empty state whatever the gates at padded positions are.
"""

from __future__ import annotations

import torch
from torch import nn

from ..common import token_diagonal
from .base import MatrixMixer


class RecurrentMixer(MatrixMixer):
    """Base of the bidirectional recurrent classes: Hydra's per-token diagonal."""

    position_aware = True  # the scans order the tokens

    def _init_diagonal(self, inner: nn.Module, factory: dict) -> None:
        """``D`` (H,) and ``fc_D`` (d_inner -> H), Hydra's diagonal."""
        inner.D = nn.Parameter(torch.ones(self.nheads, **factory))
        inner.D._no_weight_decay = True
        inner.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False, **factory)

    def _diagonal(self, v: torch.Tensor) -> torch.Tensor:
        """(B, L, H) ``fc_D(v_t) + D``."""
        return token_diagonal(v, self.matrix_mixer.fc_D, self.matrix_mixer.D)
