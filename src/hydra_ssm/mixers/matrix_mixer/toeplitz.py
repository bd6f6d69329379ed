"""The Toeplitz class: a kernel by lag, applied by FFT."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...ops.toeplitz import toeplitz_fft, toeplitz_matrix
from ..registry import register_mixer
from .base import MatrixMixer


@register_mixer("toeplitz")
class ToeplitzMixer(MatrixMixer):
    """Toeplitz: ``M[i, j] = kernel[i - j] * 0.5 / sqrt(max_seq_len) + delta_ij``, by FFT in O(L log L).

    DI: a learned kernel ``conv_params`` (H, 2 max_seq_len - 1), indexed as the
    reference's circular FFT convolution indexes it (the coefficient of lag d
    is ``conv_params[(d + max_seq_len) mod (2 max_seq_len - 1)]``).
    SAM: the kernel is read from two per-token feature streams, ``f`` for
    lags ``d >= -1`` (``f[d + 1]``) and ``r`` for ``d <= -2`` (``r[-d - 1]``),
    with the corner lag ``d = L - 1`` taking ``r[L - 1]`` (``f[0]`` at ``L = 1``); this is the
    reference's layout at ``L = max_seq_len``, extended to any L (the
    reference itself runs only at ``L = max_seq_len``).
    """

    scale_uses_max_seq_len = True
    activate_features = True
    position_aware = True  # the kernel is indexed by lag
    conv_features = {"f": "nheads", "r": "nheads"}

    def init_params(self, inner, factory):
        if not self.is_data_dependent:
            # at least float32, as in the reference (the FFT runs in float32 or float64)
            dtype = torch.promote_types(factory["dtype"] or torch.float32, torch.float32)
            inner.conv_params = nn.Parameter(torch.empty(self.nheads, 2 * self.max_seq_len - 1,
                                                         dtype=dtype, device=factory["device"]))
            nn.init.xavier_uniform_(inner.conv_params)

    def _kernel(self, feats, mask, length):
        """Kernel by lag, (H or B, H, 2L - 1) with index d + L - 1."""
        scale = 0.5 / math.sqrt(self.max_seq_len)
        if not self.is_data_dependent:
            c = self.matrix_mixer.conv_params
            lagged = torch.cat([c[:, 1:], c[:, :1]], dim=-1)  # index d + max_seq_len - 1
            return lagged[:, self.max_seq_len - length: self.max_seq_len + length - 1] * scale
        f = feats["f"].transpose(1, 2)  # (B, H, L)
        r = feats["r"].transpose(1, 2)
        if mask is not None:
            # a row with n < L valid tokens: its corner lag n - 1 must read r[n - 1], as unpadded
            n = mask.sum(1)
            pos = torch.arange(length, device=f.device)
            r_last = r.gather(2, (n - 1).clamp(min=0)[:, None, None].expand(-1, r.shape[1], 1))
            # at n == 1 the unpadded layout has no r entries: its single lag reads f[0]
            r_last = torch.where((n > 1)[:, None, None], r_last, f[..., :1])
            f = torch.where((pos[None] == n[:, None])[:, None], r_last, f)
        c = torch.cat([r[..., 1:].flip(-1), f], dim=-1)  # (B, H, 2L-1): the reference's layout
        return torch.cat([c[..., 1:], c[..., :1]], dim=-1) * scale

    def mix(self, v, feats, mask):
        return toeplitz_fft(v, self._kernel(feats, mask, v.shape[1])) + v

    def matrix(self, v, feats, mask):
        T = toeplitz_matrix(self._kernel(feats, mask, v.shape[1]), v.shape[1])
        return self._plus_identity(T.expand(v.shape[0], -1, -1, -1) if T.dim() == 3 else T)
