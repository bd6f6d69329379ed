"""Hydra: the bidirectional (quasiseparable) state space mixer."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._checks import (check_bool, check_choice, check_float_dtype, check_number, check_positive_ints,
                       exporting, tracing)
from ..ops import quasiseparable_chunked, quasiseparable_matrix, quasiseparable_minimal, quasiseparable_two_pass
from ..ops._layout import PackedLayout
from .common import (check_layer_sizes, check_padded_input, decay_rate, dt_bias, in_proj_and_conv, token_diagonal,
                     work_dtype)
from .norm import GatedRMSNorm
from .registry import SequenceMixer, check_packed_row, register_mixer

SCAN_IMPLS = {"fused": quasiseparable_chunked, "two_pass": quasiseparable_two_pass, "minimal": quasiseparable_minimal}


def scan_for(scan_impl: str):
    """The scan to run: the loop-free ``minimal`` one while ``torch.export`` / ``torch.onnx.export``
    trace the layer (one graph for every length, no in-place writes), else ``scan_impl``'s."""
    return quasiseparable_minimal if exporting() else SCAN_IMPLS[scan_impl]


def check_dt_limit(dt_limit) -> None:
    """``dt_limit``: a pair (low, high) of numbers with 0 <= low < high (high may be inf)."""
    ok = isinstance(dt_limit, (tuple, list)) and len(dt_limit) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in dt_limit)
    if not ok or not 0 <= dt_limit[0] < dt_limit[1]:
        raise ValueError(f"dt_limit must be a pair (low, high) with 0 <= low < high, got {dt_limit!r}")


@register_mixer("hydra")
class Hydra(SequenceMixer):
    """Hydra layer, a drop-in for the reference module (same arguments, defaults
    and parameter names), running on any PyTorch device.

    ``forward(u, attention_mask=None, cu_seqlens=None)``: u is (B, L, d_model); the
    optional mask is (B, L), 1 for a valid token, padding on the left or right.
    Outputs at valid positions equal those of each sequence run alone; padded
    positions of the output are zero. Or a packed batch: u (1, total, d_model)
    holding sequences back to back and ``cu_seqlens`` their int offsets (n + 1,),
    as in flash-attention and mamba_ssm: each sequence is mixed as if it were
    alone (neither the scans nor the convolution cross a boundary; learnable
    initial states start every sequence), at the cost of its own tokens only.

    ``scan_impl`` chooses the quasiseparable algorithm: ``"fused"`` (default,
    one pass over the chunks for both directions), ``"two_pass"`` (the causal
    scan on x and on the flipped x, kept for comparison) or ``"minimal"`` (no
    loops, no in-place writes: :func:`hydra_ssm.ops.quasiseparable_minimal`).
    While ``torch.export`` or ``torch.onnx.export`` traces the layer it always
    runs ``"minimal"``, so the exported graph holds for every sequence length.
    ``chunk_size`` only trades speed against memory: the output does not depend
    on it (beyond float rounding). Its default, 64, is the fastest on CPUs for
    d_state = headdim = 64; the reference module uses 256, tuned for its GPU
    kernels, and any value may be passed.
    ``use_mem_eff_path`` is accepted for compatibility and has no effect.

    Inputs: ``u`` must have the parameters' dtype (a float32 layer does not
    silently run a float64 or bfloat16 input; convert one or the other), except
    under ``torch.autocast``, which chooses the compute dtype. A batch of 0
    sequences returns an empty ``(0, L, d_model)`` output; ``L = 0`` is an error.
    """

    position_aware = True  # the scan orders the tokens

    def __init__(
        self,
        d_model,
        d_state=64,
        d_conv=7,
        conv_init=None,
        expand=2,
        headdim=64,
        ngroups=1,
        dt_min=0.001,
        dt_max=0.1,
        dt_init_floor=1e-4,
        dt_limit=(0.0, float("inf")),
        learnable_init_states=False,
        activation="swish",
        bias=False,
        conv_bias=True,
        chunk_size=64,
        use_mem_eff_path=False,
        layer_idx=None,
        device=None,
        dtype=None,
        scan_impl="fused",
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        check_positive_ints(d_state=d_state, ngroups=ngroups, chunk_size=chunk_size)
        check_layer_sizes(d_model, expand, headdim, d_conv, activation)
        check_float_dtype(dtype)
        for name, value in (("learnable_init_states", learnable_init_states), ("bias", bias), ("conv_bias", conv_bias)):
            check_bool(name, value)
        nheads = expand * d_model // headdim
        if nheads % ngroups != 0:
            raise ValueError(f"the number of heads ({nheads}) must be divisible by ngroups ({ngroups})")
        check_number("dt_min", dt_min, low=0, low_open=True, what="a positive number")
        check_number("dt_max", dt_max, low=0, low_open=True, what="a positive number")
        if not dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        check_number("dt_init_floor", dt_init_floor, low=0, what="a non-negative number")
        check_dt_limit(dt_limit)
        if conv_init is not None:
            check_number("conv_init", conv_init, low=0, low_open=True, what="a positive number or None")
        check_choice("scan_impl", scan_impl, sorted(SCAN_IMPLS))

        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.conv_init = conv_init
        self.expand = expand
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.ngroups = ngroups
        self.nheads = nheads
        self.dt_limit = tuple(dt_limit)
        self.learnable_init_states = learnable_init_states
        self.activation = activation
        self.chunk_size = chunk_size
        self.use_mem_eff_path = use_mem_eff_path
        self.layer_idx = layer_idx
        self.scan_impl = scan_impl

        # in_proj columns: [z (d_inner) | x (d_inner), B_f, C_f, B_b, C_b (G*N each) | dt_f, dt_b (H each)]
        self.bc_dim = ngroups * d_state
        self.conv_dim = self.d_inner + 4 * self.bc_dim
        self.in_proj, self.conv1d = in_proj_and_conv(d_model, self.d_inner + self.conv_dim + 2 * nheads, self.conv_dim,
                                                     d_conv, conv_init, bias, conv_bias, factory)
        if learnable_init_states:
            self.init_states = nn.Parameter(torch.zeros(nheads, headdim, d_state, **factory))
            self.init_states._no_weight_decay = True

        self.dt_bias = dt_bias(nheads, dt_min, dt_max, dt_init_floor, factory)
        self.A_log = nn.Parameter(torch.zeros(nheads, device=device, dtype=dtype))  # A = -exp(A_log) = -1
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(nheads, **factory))
        self.D._no_weight_decay = True
        self.fc_D = nn.Linear(self.d_inner, nheads, bias=False, **factory)
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # ------------------------------------------------------------------ pieces
    def _value_stream(self, u: torch.Tensor, mask: torch.Tensor | None, packed: PackedLayout | None = None):
        """in_proj, masked non-causal conv, activation, split; dt with padding zeroed.

        ``packed``: for a packed row, the layout that spaces its sequences out by the conv's
        half-width, so that the conv reads zeros, not the next sequence, across a boundary.
        Returns z, x (B, L, H, P), B_f, C_f, B_b, C_b (B, L, G, N), dt_f, dt_b (B, L, H).
        """
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, 2 * self.nheads], dim=-1)
        if mask is not None:
            xBC = xBC * mask[..., None].to(xBC.dtype)  # padding acts as the conv's zero padding
        if packed is not None:
            xBC = packed.gather(self.conv1d(packed.scatter(xBC).transpose(1, 2)).transpose(1, 2))
        else:
            xBC = self.conv1d(xBC.transpose(1, 2)).transpose(1, 2)
        xBC = F.silu(xBC)
        x, B_f, C_f, B_b, C_b = torch.split(xBC, [self.d_inner] + [self.bc_dim] * 4, dim=-1)
        # both directions share dt_bias: (B, L, 2, H)
        cdt = work_dtype(dt.dtype)
        dt = F.softplus(rearrange(dt.to(cdt), "b l (two h) -> b l two h", two=2) + self.dt_bias.to(cdt))
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(self.dt_limit[0], self.dt_limit[1])
        if mask is not None:
            # dt = 0 at padding: no input, no decay; C = 0: no output read from padded rows.
            dt = dt * mask[..., None, None]
            C_f = C_f * mask[..., None].to(C_f.dtype)
            C_b = C_b * mask[..., None].to(C_b.dtype)
        dt_f, dt_b = dt.unbind(dim=2)
        x = rearrange(x, "b l (h p) -> b l h p", p=self.headdim)
        B_f, C_f, B_b, C_b = (rearrange(t, "b l (g n) -> b l g n", g=self.ngroups) for t in (B_f, C_f, B_b, C_b))
        return z, x, B_f, C_f, B_b, C_b, dt_f, dt_b

    def _A(self):
        return decay_rate(self.A_log)

    def _diag(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token diagonal D_t = fc_D(x_t) + D, (B, L, H)."""
        return token_diagonal(x, self.fc_D, self.D)

    def _check(self, u, attention_mask):
        return check_padded_input(u, self.d_model, attention_mask, self.in_proj.weight.dtype)

    # ---------------------------------------------------------------- forward
    def forward(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        if cu_seqlens is not None and attention_mask is not None:
            raise ValueError("pass attention_mask (a padded batch) or cu_seqlens (a packed row), not both")
        mask = self._check(u, attention_mask)
        packed = None
        if cu_seqlens is not None:
            packed = PackedLayout(check_packed_row(u, cu_seqlens), 1, self.d_conv // 2, u.device)
        if not tracing() and u.shape[0] == 0:  # no sequences: an empty output, still attached to out_proj for autograd
            return self.out_proj(u.new_zeros(0, u.shape[1], self.d_inner))
        z, x, B_f, C_f, B_b, C_b, dt_f, dt_b = self._value_stream(u, mask, packed)
        init = self.init_states if self.learnable_init_states else None
        y = scan_for(self.scan_impl)(x, dt_f, dt_b, self._A(), B_f, C_f, B_b, C_b, D=self._diag(x),
                                       chunk_size=self.chunk_size, initial_states=init, cu_seqlens=cu_seqlens)
        out = self.out_proj(self.norm(rearrange(y, "b l h p -> b l (h p)"), z))
        if mask is not None:
            out = out * mask[..., None].to(out.dtype)
        return out

    def forward_packed(self, u: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """A packed row (1, total, d_model) with its offsets: Hydra's own packed path (see :meth:`forward`)."""
        return self(u, cu_seqlens=cu_seqlens)

    def materialize(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, H, L, L) matrix applied to the value stream x (after conv and
        activation): ``y[:, i, h] = sum_j M[:, h, i, j] x[:, j, h]`` before
        norm, gate and out_proj. Learnable initial states, if any, add an
        affine term that is not part of the matrix."""
        mask = self._check(u, attention_mask)
        if u.shape[0] == 0:
            return u.new_zeros(0, self.nheads, u.shape[1], u.shape[1])
        _, x, B_f, C_f, B_b, C_b, dt_f, dt_b = self._value_stream(u, mask)
        return quasiseparable_matrix(dt_f, dt_b, self._A(), B_f, C_f, B_b, C_b, D=self._diag(x))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, nheads={self.nheads}, headdim={self.headdim}, "
                f"ngroups={self.ngroups}, chunk_size={self.chunk_size}, scan_impl={self.scan_impl!r}")
