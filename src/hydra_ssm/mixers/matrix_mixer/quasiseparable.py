"""The quasiseparable class: Hydra with B, C shared by both directions."""

from __future__ import annotations

from torch import nn

from ...ops import quasiseparable_chunked, quasiseparable_matrix
from ..common import token_diagonal
from ..registry import register_mixer
from .ssm import SSMMixer


@register_mixer("quasiseparable")
class QuasiseparableMixer(SSMMixer):
    """Quasiseparable mixer: Hydra with B, C shared by both directions, O(L) by
    :func:`hydra_ssm.ops.quasiseparable_chunked`::

        M[i, j] = C[i-1] . B[j] dt_f[j] prod_{k=j+1..i-1} a_f[k]   (j < i)
        M[i, j] = C[i+1] . B[j] dt_b[j] prod_{k=i+1..j-1} a_b[k]   (j > i)
        M[i, i] = fc_D(v_i) + D

    with ``a = exp(dt A)``, ``A = -exp(A_log)``, ``dt = softplus(dt_raw + dt_bias)``.
    SAM: B, C (activated) and the two dt's (forward | backward) come from in_proj.
    DI: B, C are the learned ``BC`` (max_seq_len, 2 d_state), dt = softplus(dt_bias).
    The state size is ``d_state = nheads * qk_dim`` with one group.
    """

    conv_features = {"B": "d_state", "C": "d_state"}
    direct_features = {"dt_f": "nheads", "dt_b": "nheads"}

    def init_params(self, inner, factory):
        self._ssm_params(inner, factory)
        inner.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False, **factory)

    def _args(self, v, feats, mask):
        B, C = self._BC(feats, v)
        dt = self._dt(feats, v, ("dt_f", "dt_b"))
        if mask is not None:
            dt = dt * mask[..., None, None]  # no input and no decay at padding
            C = C * mask[..., None, None].to(C.dtype)  # nothing read out at padding
        D = token_diagonal(v, self.matrix_mixer.fc_D, self.matrix_mixer.D)
        return dt[:, :, 0], dt[:, :, 1], self._A(), B, C, D

    def mix(self, v, feats, mask):
        dt_f, dt_b, A, B, C, D = self._args(v, feats, mask)
        return quasiseparable_chunked(v, dt_f, dt_b, A, B, C, B, C, D=D, chunk_size=self.chunk_size)

    def matrix(self, v, feats, mask):
        dt_f, dt_b, A, B, C, D = self._args(v, feats, mask)
        return quasiseparable_matrix(dt_f, dt_b, A, B, C, B, C, D=D)
