"""The dense class: a learned L x L matrix per head."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import register_mixer
from .base import MatrixMixer


@register_mixer("dense")
class DenseMixer(MatrixMixer):
    """Dense: a learned (H, max_seq_len, max_seq_len) matrix per head; data-independent only.

    ``M = M_param[:, :L, :L] / sqrt(max_seq_len) + I``. O(L^2) time and memory.
    """

    forms = ("di",)

    def init_params(self, inner, factory):
        inner.M = nn.Parameter(torch.empty(self.nheads, self.max_seq_len, self.max_seq_len, **factory))
        nn.init.xavier_normal_(inner.M)

    def _M(self, length):
        return self.matrix_mixer.M[:, :length, :length] / math.sqrt(self.max_seq_len)

    def mix(self, v, feats, mask):
        return torch.einsum("hij,bjhp->bihp", self._M(v.shape[1]).to(v.dtype), v) + v

    def matrix(self, v, feats, mask):
        return self._plus_identity(self._M(v.shape[1])).expand(v.shape[0], -1, -1, -1)
