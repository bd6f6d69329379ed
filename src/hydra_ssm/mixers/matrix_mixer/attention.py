"""The softmax attention class (fused SDPA)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..common import key_mask, work_dtype
from ..registry import register_mixer
from .qk import QKMixer


@register_mixer("attention")
class AttentionMixer(QKMixer):
    """Softmax attention mixer, ``M = softmax(Q K^T / sqrt(qk_dim)) + I`` per head,
    through ``F.scaled_dot_product_attention`` (no L x L tensor on fused backends).

    SAM: q, k from the conv (not activated). DI: learned per-position
    ``q_matrix``, ``k_matrix`` (max_seq_len, H, qk_dim). The reference layer's
    DI einsum does not match these parameter shapes (it fails with a shape
    error); this class implements the evident intent,
    ``softmax(Q[:L] K[:L]^T / sqrt(qk_dim)) V``.
    """

    def init_params(self, inner, factory):
        if not self.is_data_dependent:
            self._init_learned_qk(inner, factory)

    def _qk(self, feats, b, length):
        """(B, H, L, D) each."""
        if self.is_data_dependent:
            return self._heads(feats["q"]).transpose(1, 2), self._heads(feats["k"]).transpose(1, 2)
        q = self.matrix_mixer.q_matrix[:length].transpose(0, 1)[None].expand(b, -1, -1, -1)
        k = self.matrix_mixer.k_matrix[:length].transpose(0, 1)[None].expand(b, -1, -1, -1)
        return q, k

    def mix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[0], v.shape[1])
        vh = v.transpose(1, 2)
        # Fused SDPA kernels (O(L) memory) need q, k, v of one head size and a unit stride in the
        # last dim; otherwise PyTorch silently takes the math path, which builds (B, H, L, L)
        # weights. q, k come from the conv output (channel stride L) or are broadcast over the
        # batch, and F.pad by zero is a no-op view, so pad and then force a contiguous copy.
        e = max(self.qk_dim, self.headdim)
        q, k = (F.pad(t.to(v.dtype), (0, e - self.qk_dim)).contiguous() for t in (q, k))
        y = F.scaled_dot_product_attention(q, k, F.pad(vh, (0, e - self.headdim)).contiguous(), attn_mask=key_mask(mask),
                                           scale=1.0 / math.sqrt(self.qk_dim))
        return y[..., : self.headdim].transpose(1, 2) + v

    def matrix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[0], v.shape[1])
        s = torch.einsum("bhid,bhjd->bhij", q.to(work_dtype(v.dtype)), k.to(work_dtype(v.dtype))) / math.sqrt(self.qk_dim)
        km = key_mask(mask)
        if km is not None:
            s = s.masked_fill(~km, float("-inf"))
        return self._plus_identity(torch.softmax(s, dim=-1))
