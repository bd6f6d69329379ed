"""The bidirectional delta-rule class (bi_deltanet)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._checks import check_positive_int
from ...ops import bi_delta_chunked, bi_delta_matrix
from ..common import work_dtype
from ..registry import register_mixer
from .recurrent import RecurrentMixer


@register_mixer("bi_deltanet")
class BiDeltaNetMixer(RecurrentMixer):
    """Bidirectional DeltaNet: a causal delta rule on the lower triangle, an anti-causal one on the
    upper, Hydra's diagonal between them; O(L) by :func:`hydra_ssm.ops.bi_delta_chunked` (the
    WY/UT chunked form, derived for both triangles in ``ops/delta.py``).

    Per head and direction, a state S (qk_dim x headdim) is updated at every token t by
    ``num_householder`` factors r = 1..R (DeltaProduct; R = 1 is DeltaNet)::

        S <- (I - beta[t, r] k[t, r] k[t, r]^T) S + beta[t, r] k[t, r] v[t]^T

    and read as ``S^T q[t]``; the forward direction runs left to right, the backward one right to
    left with its own betas, and the readouts are moved one position past the diagonal, as in
    Hydra: ``M[i, j]`` reads position i-1's forward state for j < i, position i+1's backward state
    for j > i, and ``M[i, i] = fc_D(v_i) + D``. All factors of a token write its one value, so the
    layer is one L x L matrix applied to v (``materialize``).

    q and k (activated, then L2-normalised per head) come from the conv and are shared by the two
    directions; beta_f, beta_b from in_proj: ``beta = sigmoid(.)``, in [0, 1], so every factor has
    eigenvalues in [0, 1]; with ``allow_neg_eigval=True``, ``beta = 2 sigmoid(.)`` in [0, 2] and a
    factor may reflect (eigenvalue down to -1), which lets the recurrence track parity.

    Options: ``allow_neg_eigval`` (bool, default False), ``num_householder`` (int >= 1, default 1).
    Data-dependent only: the delta rule's transitions are built from the keys it writes, and a
    learned fixed matrix is the dense class.
    """

    forms = ("sam",)
    activate_features = True
    options = {"allow_neg_eigval": False, "num_householder": 1}
    default_chunk_size = 16  # the fastest chunk of delta_chunked on CPUs (ops notes)
    conv_features = {"q": "d_state", "k": "key_width"}
    direct_features = {"beta_f": "beta_width", "beta_b": "beta_width"}

    @property
    def key_width(self) -> int:
        """in_proj channels of the keys: num_householder keys of qk_dim per head."""
        return self.num_householder * self.d_state

    @property
    def beta_width(self) -> int:
        """in_proj channels of one direction's betas: one per head and factor."""
        return self.num_householder * self.nheads

    def init_params(self, inner, factory):
        check_positive_int("num_householder", self.num_householder)
        self._init_diagonal(inner, factory)

    def _args(self, v, feats):
        """q (B, L, H, N), k (B, L, H, R, N), beta_f, beta_b (B, L, H, R), in the work dtype."""
        w = work_dtype(v.dtype)
        R = self.num_householder
        q = F.normalize(self._heads(feats["q"]).to(w), dim=-1, eps=1e-6)
        k = F.normalize(self._heads(feats["k"]).unflatten(-1, (R, self.qk_dim)).to(w), dim=-1, eps=1e-6)
        scale = 2.0 if self.allow_neg_eigval else 1.0
        betas = [scale * torch.sigmoid(feats[name].to(w)).reshape(*v.shape[:2], self.nheads, R)
                 for name in ("beta_f", "beta_b")]
        return q, k, betas[0], betas[1]

    def mix(self, v, feats, mask):
        q, k, beta_f, beta_b = self._args(v, feats)
        y = bi_delta_chunked(v, q, k, beta_f, q, k, beta_b, D=self._diagonal(v), chunk_size=self.chunk_size)
        return y.to(v.dtype)

    def matrix(self, v, feats, mask):
        q, k, beta_f, beta_b = self._args(v, feats)
        return bi_delta_matrix(q, k, beta_f, q, k, beta_b, D=self._diagonal(v).to(q.dtype))
