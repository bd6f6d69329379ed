"""The Vandermonde (cosine) class."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...ops.vandermonde import dft_cos_matrix, dft_cos_mix, vandermonde_matrix, vandermonde_mix
from ..common import work_dtype
from ..registry import register_mixer
from .dft_holder import DFTHolder
from .qk import QKMixer


@register_mixer("vandermonde")
class VandermondeMixer(QKMixer):
    """Vandermonde (cosine) mixer, ``M = scale * V + I``.

    - DI with ``is_dft=True`` (the default, as in the reference layer):
      ``V[t, l] = cos(2 pi t l / max_seq_len)``, scale ``1/sqrt(max_seq_len)``,
      applied by FFT in O(max_seq_len log max_seq_len). The state_dict carries the
      ``dft_matrix`` entry of the reference layout; it is generated on save and
      not kept in memory.
    - DI with ``is_dft=False``: learned frequencies ``q_bias``, ``k_bias``
      (H, qk_dim, max_seq_len), ``V[t, l] = sum_d cos(2 pi q[d, t] l) + cos(2 pi k[d, l] t)``,
      scale ``1/sqrt(2 max_seq_len qk_dim)``. This mixes over l, the evident
      intent; the reference's einsum for this (unused) option sums each row
      into a diagonal instead.
    - SAM: ``V[t, l] = sum_d cos(2 pi eps q_t[d] l) - cos(2 pi eps k_l[d] t)``
      with q, k from the conv (not activated), eps = 1e-3, scale
      ``1/sqrt(2 max_seq_len qk_dim)``.

    The SAM and learned DI forms are quadratic in time, tiled so memory is O(L * tile).
    """

    scale_uses_max_seq_len = True
    position_aware = True  # the cosines are functions of the positions
    options = {"is_dft": True}
    eps = 1e-3

    def init_params(self, inner, factory):
        if self.is_data_dependent:
            return
        if self.is_dft:
            self.matrix_mixer = inner = DFTHolder(self.max_seq_len)
        else:
            inner.q_bias = nn.Parameter(torch.zeros(self.nheads, self.qk_dim, self.max_seq_len, **factory))
            inner.k_bias = nn.Parameter(torch.zeros(self.nheads, self.qk_dim, self.max_seq_len, **factory))

    def _scale(self):
        if not self.is_data_dependent and self.is_dft:
            return 1.0 / math.sqrt(self.max_seq_len)
        return 1.0 / math.sqrt(2 * self.max_seq_len * self.qk_dim)

    def _qk(self, feats, length):
        """Frequencies (.., L, H, D) and the sign of the k term."""
        if self.is_data_dependent:
            return self._heads(feats["q"]) * self.eps, self._heads(feats["k"]) * self.eps, -1.0
        q = self.matrix_mixer.q_bias[:, :, :length].permute(2, 0, 1)
        k = self.matrix_mixer.k_bias[:, :, :length].permute(2, 0, 1)
        return q, k, 1.0

    def mix(self, v, feats, mask):
        if not self.is_data_dependent and self.is_dft:
            return dft_cos_mix(v, self.max_seq_len) * self._scale() + v
        q, k, sign = self._qk(feats, v.shape[1])
        return vandermonde_mix(v, q, k, sign) * self._scale() + v

    def matrix(self, v, feats, mask):
        b, length = v.shape[:2]
        if not self.is_data_dependent and self.is_dft:
            V = dft_cos_matrix(length, self.max_seq_len, v.device, work_dtype(v.dtype))[None, None]
            V = V.expand(b, self.nheads, -1, -1)
        else:
            q, k, sign = self._qk(feats, length)
            V = vandermonde_matrix(q.to(work_dtype(v.dtype)), k.to(work_dtype(v.dtype)), sign).expand(b, -1, -1, -1)
        return self._plus_identity(V * self._scale())
