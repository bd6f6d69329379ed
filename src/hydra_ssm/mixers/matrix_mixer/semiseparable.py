"""The semiseparable class: causal SSD (Mamba-2)."""

from __future__ import annotations

import torch

from ...ops import semiseparable_chunked, semiseparable_matrix
from ..common import work_dtype
from ..registry import register_mixer
from .ssm import SSMMixer


@register_mixer("semiseparable")
class SemiseparableMixer(SSMMixer):
    """Semiseparable (causal SSD, Mamba-2) mixer, O(L) by
    :func:`hydra_ssm.ops.semiseparable_chunked`::

        M[i, j] = C[i] . B[j] dt[j] prod_{k=j+1..i} a[k]   (j <= i),   plus D on the diagonal

    SAM: B, C (activated) and dt (H columns) from in_proj; DI: learned ``BC``
    (max_seq_len, 2 d_state), dt = softplus(dt_bias). Causal: with a
    depthwise conv that is non-causal (as in all classes here), the layer as a
    whole sees ``d_conv // 2`` tokens ahead.
    """

    causal = True
    conv_features = {"B": "d_state", "C": "d_state"}
    direct_features = {"dt": "nheads"}

    def init_params(self, inner, factory):
        self._ssm_params(inner, factory)

    def _args(self, v, feats, mask):
        B, C = self._BC(feats, v)
        dt = self._dt(feats, v, ("dt",))[:, :, 0]
        if mask is not None:
            dt = dt * mask[..., None]
        return dt, self._A(), B, C

    def mix(self, v, feats, mask):
        dt, A, B, C = self._args(v, feats, mask)
        y = semiseparable_chunked(v, dt.to(v.dtype), A, B, C, chunk_size=self.chunk_size)
        return y + v * self.matrix_mixer.D.to(v.dtype)[:, None]

    def matrix(self, v, feats, mask):
        dt, A, B, C = self._args(v, feats, mask)
        w = work_dtype(v.dtype)
        M = semiseparable_matrix(dt.to(w), A.to(w), B.to(w), C.to(w))
        return M + torch.diag_embed(self.matrix_mixer.D.to(w).expand(v.shape[1], -1).T)
