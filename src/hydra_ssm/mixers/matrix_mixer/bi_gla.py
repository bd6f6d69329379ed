"""The bidirectional gated linear attention class (bi_gla)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import bi_gated_chunked, bi_gated_matrix
from ..common import work_dtype
from ..registry import register_mixer
from .recurrent import RecurrentMixer


@register_mixer("bi_gla")
class BiGLAMixer(RecurrentMixer):
    """Bidirectional gated linear attention: a quasiseparable matrix whose decays act per key
    dimension, O(L) by :func:`hydra_ssm.ops.bi_gated_chunked`::

        M[i, j] = q[i-1] . (k[j] * prod_{m=j+1..i-1} a_f[m]) / sqrt(qk_dim)   (j < i)
        M[i, j] = q[i+1] . (k[j] * prod_{m=i+1..j-1} a_b[m]) / sqrt(qk_dim)   (j > i)
        M[i, i] = fc_D(v_i) + D

    per head, the product taken elementwise over the qk_dim key dimensions, with
    ``log a = logsigmoid(g + gate_bias) / gate_normalizer`` (a in (0, 1)). Each direction is
    a causal gated linear attention layer's recurrence (state ``S_t = diag(a_t) S_{t-1} + k_t v_t^T``,
    read ``q_t^T S_t``), the backward one run right to left; the readout is moved one position
    past the diagonal, as in Hydra.

    SAM: q, k (qk_dim per head) from the conv; gate logits g_f, g_b (qk_dim per head, one per
    direction) from in_proj. DI: learned per-position ``q_matrix``, ``k_matrix`` (max_seq_len, H,
    qk_dim) and constant gates (``gate_bias`` alone).
    """

    default_chunk_size = 32  # the fastest chunk of gated_chunked on CPUs (ops notes)
    conv_features = {"q": "d_state", "k": "d_state"}
    direct_features = {"g_f": "d_state", "g_b": "d_state"}
    #: log a = logsigmoid(logit) / gate_normalizer: decays start near 1 (0.96 at logit 0)
    gate_normalizer = 16.0

    def init_params(self, inner, factory):
        if not self.is_data_dependent:
            for name in ("q_matrix", "k_matrix"):
                param = nn.Parameter(torch.empty(self.max_seq_len, self.nheads, self.qk_dim, **factory))
                nn.init.xavier_normal_(param)
                setattr(inner, name, param)
        inner.gate_bias = nn.Parameter(torch.zeros(2, self.nheads, self.qk_dim, **factory))
        inner.gate_bias._no_weight_decay = True
        self._init_diagonal(inner, factory)

    def _args(self, v, feats):
        """q, k (B, L, H, N) and the two directions' log decays (B, L, H, N), in the work dtype."""
        w = work_dtype(v.dtype)
        b, length = v.shape[:2]
        if self.is_data_dependent:
            q, k = self._heads(feats["q"]), self._heads(feats["k"])
            logits = torch.stack([self._heads(feats["g_f"]), self._heads(feats["g_b"])]).to(w)
        else:
            q = self.matrix_mixer.q_matrix[:length].expand(b, -1, -1, -1)
            k = self.matrix_mixer.k_matrix[:length].expand(b, -1, -1, -1)
            logits = torch.zeros(2, b, length, self.nheads, self.qk_dim, dtype=w, device=v.device)
        log_decay = F.logsigmoid(logits + self.matrix_mixer.gate_bias.to(w)[:, None, None]) / self.gate_normalizer
        k = k / math.sqrt(self.qk_dim)
        return q.to(w), k.to(w), log_decay[0], log_decay[1]

    def mix(self, v, feats, mask):
        q, k, ld_f, ld_b = self._args(v, feats)
        y = bi_gated_chunked(v, q, k, ld_f, q, k, ld_b, D=self._diagonal(v), chunk_size=self.chunk_size)
        return y.to(v.dtype)

    def matrix(self, v, feats, mask):
        q, k, ld_f, ld_b = self._args(v, feats)
        return bi_gated_matrix(q, k, ld_f, q, k, ld_b, D=self._diagonal(v).to(q.dtype))
