"""Shared base of the state space classes (quasiseparable, semiseparable)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import decay_rate, dt_bias, work_dtype
from .base import MatrixMixer


class SSMMixer(MatrixMixer):
    """Shared base of the state space classes: dt_bias, A_log, D (and DI's learned B, C)."""

    activate_features = True
    position_aware = True  # the scan orders the tokens

    def _ssm_params(self, inner, factory, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, per_state_decay=False):
        """``A_log`` is (H,), or (H, qk_dim) with ``per_state_decay`` (a rate per state of a head); A = -1 at init."""
        if not self.is_data_dependent:
            inner.BC = nn.Parameter(torch.empty(self.max_seq_len, 2 * self.d_state, **factory))
            nn.init.xavier_normal_(inner.BC)
        inner.dt_bias = dt_bias(self.nheads, dt_min, dt_max, dt_init_floor, factory)
        decay_shape = (self.nheads, self.qk_dim) if per_state_decay else (self.nheads,)
        inner.A_log = nn.Parameter(torch.zeros(decay_shape, device=factory["device"], dtype=factory["dtype"]))
        inner.A_log._no_weight_decay = True
        inner.D = nn.Parameter(torch.ones(self.nheads, **factory))
        inner.D._no_weight_decay = True

    def _A(self):
        return decay_rate(self.matrix_mixer.A_log)

    def _BC(self, feats, v):
        """B, C as (B or 1, L, 1, N) (one group)."""
        if self.is_data_dependent:
            return feats["B"][:, :, None], feats["C"][:, :, None]
        bc = self.matrix_mixer.BC[: v.shape[1]].to(v.dtype)
        B, C = bc[None, :, None].split([self.d_state, self.d_state], dim=-1)
        return B.expand(v.shape[0], -1, -1, -1), C.expand(v.shape[0], -1, -1, -1)

    def _dt(self, feats, v, names):
        """softplus(dt + dt_bias) for the dt streams ``names``: (B, L, len(names), H), zero at padding
        once the caller applies the mask."""
        w = work_dtype(v.dtype)
        bias = self.matrix_mixer.dt_bias.to(w)
        if self.is_data_dependent:
            raw = torch.stack([feats[name].to(w) for name in names], dim=2) + bias
        else:
            raw = bias.expand(v.shape[0], v.shape[1], len(names), -1)
        return F.softplus(raw)
