"""The Cauchy class."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...ops.cauchy import cauchy_matrix, cauchy_mix
from ..common import work_dtype
from ..registry import register_mixer
from .qk import QKMixer


@register_mixer("cauchy")
class CauchyMixer(QKMixer):
    """Cauchy mixer, ``M[t, l] = scale * sum_d 1 / (q_t[d] + k_l[d] + 1e-8) + delta_tl``,
    scale ``1/sqrt(max_seq_len qk_dim)``.

    DI: ``q = exp(q_matrix)``, ``k = exp(k_matrix)`` from learned (max_seq_len, H, qk_dim).
    SAM: ``q = exp(q) + bias``, ``k = exp(k) + bias`` from the conv features (not
    activated), with a learned scalar ``bias`` (0.5 at init).
    Quadratic time, tiled so memory is O(L * tile).
    """

    scale_uses_max_seq_len = True
    position_aware = True
    tol = 1e-8

    def init_params(self, inner, factory):
        if self.is_data_dependent:
            inner.bias = nn.Parameter(torch.tensor(0.5, **factory))
        else:
            self._init_learned_qk(inner, factory)

    def _qk(self, feats, length):
        if self.is_data_dependent:
            bias = self.matrix_mixer.bias
            return torch.exp(self._heads(feats["q"])) + bias, torch.exp(self._heads(feats["k"])) + bias
        return torch.exp(self.matrix_mixer.q_matrix[:length]), torch.exp(self.matrix_mixer.k_matrix[:length])

    def _scale(self):
        return 1.0 / math.sqrt(self.max_seq_len * self.qk_dim)

    def mix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[1])
        return cauchy_mix(v, q, k, self.tol) * self._scale() + v

    def matrix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[1])
        C = cauchy_matrix(q.to(work_dtype(v.dtype)), k.to(work_dtype(v.dtype)), self.tol).expand(v.shape[0], -1, -1, -1)
        return self._plus_identity(C * self._scale())
