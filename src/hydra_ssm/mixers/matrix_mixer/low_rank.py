"""The low-rank class, applied as Q (K^T v)."""

from __future__ import annotations

import math

from ...ops.low_rank import low_rank_matrix, low_rank_mix
from ..registry import register_mixer
from .qk import QKMixer


@register_mixer("low_rank")
class LowRankMixer(QKMixer):
    """Low-rank mixer, ``M = scale * Q K^T + I`` per head, scale ``1/sqrt(max_seq_len qk_dim)``,
    computed as ``Q (K^T v)`` in O(L).

    DI: learned ``q_matrix``, ``k_matrix`` (max_seq_len, H, qk_dim).
    SAM: q, k from the conv, activated like v.
    """

    scale_uses_max_seq_len = True
    activate_features = True

    def init_params(self, inner, factory):
        if not self.is_data_dependent:
            self._init_learned_qk(inner, factory)

    def _qk(self, feats, length):
        if self.is_data_dependent:
            return self._heads(feats["q"]), self._heads(feats["k"])
        return self.matrix_mixer.q_matrix[:length], self.matrix_mixer.k_matrix[:length]

    def _scale(self):
        return 1.0 / math.sqrt(self.max_seq_len * self.qk_dim)

    def mix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[1])
        return low_rank_mix(v, q, k) * self._scale() + v

    def matrix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[1])
        return self._plus_identity(low_rank_matrix(q, k).expand(v.shape[0], -1, -1, -1) * self._scale())
