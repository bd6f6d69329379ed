"""Standard multi-head softmax attention, the baseline every mixer is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._checks import check_bool, check_float_dtype, check_positive_int, check_probability, check_sequence_input
from .common import key_mask
from .registry import SequenceMixer, register_mixer


@register_mixer("mha")
class MultiHeadAttention(SequenceMixer):
    """Bidirectional multi-head attention with qkv/out projections and
    ``F.scaled_dot_product_attention``. With an ``attention_mask``, padded
    tokens are never read and the outputs at padded positions are zero.

    Args:
        d_model: model width.
        num_heads: number of heads; ``d_model`` must be divisible by it.
        bias: whether the projections have biases.
        dropout: attention dropout probability (training only).

    Inputs: ``u`` must have the parameters' dtype, except under
    ``torch.autocast`` (no silent conversion). A batch of 0 sequences returns
    an empty output; ``L = 0`` is an error.
    """

    def __init__(self, d_model: int, num_heads: int = 8, bias: bool = True, dropout: float = 0.0,
                 layer_idx=None, device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("num_heads", num_heads)
        check_probability("dropout", dropout)
        check_float_dtype(dtype)
        check_bool("bias", bias)
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias, **factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory)

    def _qkv(self, u):
        q, k, v = rearrange(self.qkv(u), "b l (three h d) -> three b h l d", three=3, h=self.num_heads)
        return q, k, v

    def forward(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = check_sequence_input(u, self.d_model, attention_mask, dtype=self.qkv.weight.dtype)
        q, k, v = self._qkv(u)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask(mask),
                                           dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(rearrange(y, "b h l d -> b l (h d)"))
        return out if mask is None else out * mask[..., None].to(out.dtype)

    def materialize(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = check_sequence_input(u, self.d_model, attention_mask, dtype=self.qkv.weight.dtype)
        q, k, _ = self._qkv(u)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~key_mask(mask), float("-inf"))
        return scores.softmax(-1)

