"""The bidirectional diagonal state space class with complex or signed real decays (bi_complex)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..._checks import check_choice
from ...ops import bi_gated_chunked, bi_gated_matrix
from ..common import decay_rate, token_diagonal, work_dtype
from ..registry import register_mixer
from .ssm import SSMMixer

TRANSITIONS = ("complex", "signed")


@register_mixer("bi_complex")
class BiComplexMixer(SSMMixer):
    """Bidirectional diagonal SSM whose per-state decays rotate (complex) or may be negative
    (signed real); O(L) by :func:`hydra_ssm.ops.bi_gated_chunked`. Per head, state n and
    direction (forward left to right, backward right to left, readouts moved one position past
    the diagonal as in Hydra)::

        h[t] = a[t] * h[t-1] + B[t] dt[t] v[t],      y[t] = Re(q[t] . h[t])

    - ``transition="complex"`` (default): ``a = exp(dt (A + i theta))`` with ``A = -exp(A_log)``
      and frequencies ``theta`` (both (H, qk_dim), learned), and ``q = C exp(i C_phase)``;
    - ``transition="signed"``: ``a = 2 exp(dt A) - 1``, real in (-1, 1]: small steps decay
      towards 1, large steps flip the sign (eigenvalue -1), which lets the recurrence track parity;
      ``q = C``.

    Decays enter the scan as a log-magnitude and a phase (``log|a|``, ``arg a``), so no power of
    a overflows or underflows (``log|a|`` is floored at -80 where ``a`` passes through 0).
    The diagonal is Hydra's ``fc_D(v) + D``. SAM: B, C (qk_dim per head, activated) from the
    conv, dt_f, dt_b (per head) from in_proj; DI: learned ``BC`` (max_seq_len, 2 d_state) and
    ``dt = softplus(dt_bias)`` (a bidirectional S4D-like layer).
    """

    options = {"transition": "complex"}
    default_chunk_size = 32  # the fastest chunk of gated_chunked on CPUs (ops notes)
    conv_features = {"B": "d_state", "C": "d_state"}
    direct_features = {"dt_f": "nheads", "dt_b": "nheads"}
    #: floor of log|a| where a signed decay passes through 0 (exp(-80) is 0 for every product that matters)
    log_floor = -80.0

    def init_params(self, inner, factory):
        check_choice("transition", self.transition, TRANSITIONS)
        self._ssm_params(inner, factory, per_state_decay=True)  # A_log (H, qk_dim): A = -1
        if self.transition == "complex":
            # frequencies theta_n = pi n (as S4D-Lin) and readout phases 0
            shape = (self.nheads, self.qk_dim)
            inner.theta = nn.Parameter(math.pi * torch.arange(self.qk_dim, **factory).expand(shape).clone())
            inner.C_phase = nn.Parameter(torch.zeros(shape, **factory))
            inner.theta._no_weight_decay = inner.C_phase._no_weight_decay = True
        inner.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False, **factory)

    def _direction(self, dt):
        """log|a|, arg a (B, L, H, N) of one direction from its dt (B, L, H)."""
        mm = self.matrix_mixer
        rate = dt[..., None] * decay_rate(mm.A_log)  # dt A <= 0, (B, L, H, N)
        if self.transition == "complex":
            return rate, dt[..., None] * mm.theta.to(dt.dtype)
        a = 1 + 2 * torch.expm1(rate)  # 2 exp(dt A) - 1, in (-1, 1]
        log_mag = torch.log(a.abs().clamp_min(math.exp(self.log_floor)))
        return log_mag, (a < 0).to(a.dtype) * math.pi  # arg a: pi where a < 0

    def _args(self, v, feats):
        w = work_dtype(v.dtype)
        B, C = (self._heads(t[:, :, 0].to(w)) for t in self._BC(feats, v))
        dt = self._dt(feats, v, ("dt_f", "dt_b"))  # (B, L, 2, H)
        dt_f, dt_b = dt[:, :, 0], dt[:, :, 1]
        ld_f, ph_f = self._direction(dt_f)
        ld_b, ph_b = self._direction(dt_b)
        if self.transition == "complex":
            C = C * torch.polar(torch.ones_like(self.matrix_mixer.C_phase, dtype=w), self.matrix_mixer.C_phase.to(w))
        D = token_diagonal(v, self.matrix_mixer.fc_D, self.matrix_mixer.D).to(w)
        return dict(q_fwd=C, k_fwd=B * dt_f[..., None], log_decay_fwd=ld_f, q_bwd=C, k_bwd=B * dt_b[..., None],
                    log_decay_bwd=ld_b, D=D, phase_fwd=ph_f, phase_bwd=ph_b)

    def mix(self, v, feats, mask):
        args = self._args(v, feats)
        if self.transition == "signed":
            args = self._real_signed(args)
        return bi_gated_chunked(v, **args, chunk_size=self.chunk_size).to(v.dtype)

    @staticmethod
    def _real_signed(args: dict) -> dict:
        """The signed scan in real arithmetic: with phases 0 or pi, the product of the signs of a[j+1..i] is
        s[i] s[j] for the running sign s[t] = (-1)^(number of negative decays up to t, in the direction's own
        order), so q[i] s[i] and k[j] s[j] carry them exactly and the phases can go (their gradient is 0)."""
        out = dict(args)
        for direction, reverse in (("fwd", False), ("bwd", True)):
            negative = (args[f"phase_{direction}"] != 0).to(torch.int64)
            if reverse:  # the backward direction counts from the right
                negative = negative.flip(1)
            count = negative.cumsum(1)
            sign = (1 - 2 * (count % 2)).to(args[f"q_{direction}"].dtype)
            if reverse:
                sign = sign.flip(1)
            out[f"q_{direction}"] = args[f"q_{direction}"] * sign
            out[f"k_{direction}"] = args[f"k_{direction}"] * sign
            out[f"phase_{direction}"] = None
        return out

    def matrix(self, v, feats, mask):
        return bi_gated_matrix(**self._args(v, feats))
