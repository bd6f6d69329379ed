"""The layer every matrix mixer shares: projections, conv, norm, padding and checks.

Every matrix class is the same layer around a different sequence matrix ``M``::

    z | v, features | direct = in_proj(u)
    v, features = act(conv1d(v, features))          # depthwise, non-causal
    y[:, :, h] = M_h(v, features) @ v[:, :, h]      # per head, the class-specific part
    out = out_proj(rmsnorm(y) * weight * silu(z))

Padding: ``attention_mask`` (B, L) marks one contiguous run of valid tokens
per row. Each row is rotated so that its valid run starts at position 0, the
layer runs on the right-padded row (padding acts as the conv's zero padding,
the value stream is zero at padded positions, and each class keeps padded
positions out of its matrix), and the output is rotated back; padded outputs
are zero. Hence the outputs at valid positions equal those of the unpadded
sequence for every class, with left or right padding: positions inside the
mixer count from the first valid token.
"""

from __future__ import annotations

import inspect

import torch
from einops import rearrange
from torch import nn

from ..._checks import (
    check_bool,
    check_float_dtype,
    check_number,
    check_options,
    check_positive_int,
    check_positive_ints,
    did_you_mean,
)
from ..common import check_layer_sizes, check_padded_input, in_proj_and_conv
from ..norm import GatedRMSNorm
from ..registry import SequenceMixer, available_mixers, get_mixer_class
from .padding import roll_rows, rotation


def matrix_mixer_types() -> list[str]:
    """Names of the registered :class:`MatrixMixer` classes."""
    classes = {name: get_mixer_class(name) for name in available_mixers()}
    return [name for name, cls in classes.items() if issubclass(cls, MatrixMixer) and cls.mixer_name == name]


class MatrixMixer(SequenceMixer):
    """A matrix-mixer layer ``(B, L, d_model) -> (B, L, d_model)``, and the base class of the matrix classes.

    As a factory, ``MatrixMixer(matrix_mixer_type, is_data_dependent, d_model, qk_dim, max_seq_len=None, ...)``
    builds the class registered under ``matrix_mixer_type`` (see
    :func:`matrix_mixer_types`), with the constructor, argument names and
    parameter names of the reference Hydra repository's ``MatrixMixer``
    (goombalab/hydra), so its state_dicts load with ``strict=True``. The
    classes can also be built directly (``ToeplitzMixer(d_model=..., ...)``),
    or by name with :func:`hydra_ssm.build_mixer`.

    Arguments (names and defaults as in the reference ``MatrixMixer``):

    - ``is_data_dependent``: True for the sequence-aligned (SAM) form, whose
      matrix is computed from the input; False for the data-independent (DI)
      form, whose matrix is a learned parameter of size ``max_seq_len``.
      Default: SAM where the class has one.
    - ``qk_dim``: feature size per head of the matrix generators (q, k, B, C).
    - ``max_seq_len``: required by the DI forms (inputs may be shorter; the
      leading ``L x L`` block is used) and by the classes whose output scale
      is defined by it (toeplitz, vandermonde, cauchy, low_rank).
    - ``d_conv`` (odd), ``conv_init``, ``expand``, ``headdim``, ``activation``
      (``"silu"``/``"swish"``), ``bias``, ``conv_bias``, ``chunk_size`` (None: the class's
      ``default_chunk_size``, 256 as in the reference layer unless the class's op is faster with another),
      ``layer_idx``, ``device``, ``dtype``.
    - the class's own ``options`` (e.g. ``is_dft`` of vandermonde), as keywords.

    ``forward(u, attention_mask=None)`` and ``materialize(u, attention_mask=None)``,
    the ``(B, H, L, L)`` matrix applied to the value stream ``v`` (after conv
    and activation), so ``forward`` equals ``out_proj(norm(M @ v, z))``.

    Inputs: ``u`` must have the parameters' dtype, except under
    ``torch.autocast`` (no silent conversion). A batch of 0 sequences returns
    an empty ``(0, L, d_model)`` output; ``L = 0`` is an error. Unknown options
    raise a ValueError naming the closest accepted one.

    Writing a new class: subclass, register, set the class attributes below,
    implement ``mix`` and ``matrix`` (and ``init_params``); see docs/mixers.md.
    """

    # ---- what a subclass declares (class attributes) ------------------------------
    #: forms the class has: "sam" (data-dependent) and/or "di" (data-independent)
    forms: tuple[str, ...] = ("sam", "di")
    #: see SequenceMixer.position_aware; False unless the matrix itself depends on positions
    position_aware: bool = False
    #: True when the output scale is defined through max_seq_len (also for SAM)
    scale_uses_max_seq_len: bool = False
    #: True when the activation also applies to the conv features (not only to v)
    activate_features: bool = False
    #: True when the matrix is lower triangular (a causal mixer)
    causal: bool = False
    #: chunk (or tile) size used when the constructor gets ``chunk_size=None``
    default_chunk_size: int = 256
    #: extra keyword options of the class and their defaults (each becomes an attribute)
    options: dict = {}
    #: projection sizes of the SAM form: per-token feature streams that go through the conv with v,
    #: name -> width, the width given as the name of a layer attribute ("d_state" = nheads * qk_dim,
    #: "nheads", "qk_dim", "headdim"); ``mix`` and ``matrix`` receive them in ``feats`` as (B, L, width)
    conv_features: dict[str, str] = {}
    #: the same for feature streams taken from in_proj directly, without the conv
    direct_features: dict[str, str] = {}

    def init_params(self, inner: nn.Module, factory: dict) -> None:
        """Create the class's own parameters on ``inner`` (state_dict prefix ``matrix_mixer.``)."""

    def mix(self, v: torch.Tensor, feats: dict, mask: torch.Tensor | None) -> torch.Tensor:
        """Fast path: (B, L, H, P) -> (B, L, H, P). ``mask`` is right-padded (valid run first) or None."""
        raise NotImplementedError

    def matrix(self, v: torch.Tensor, feats: dict, mask: torch.Tensor | None) -> torch.Tensor:
        """The explicit (B, H, L, L) matrix that :meth:`mix` applies to v."""
        raise NotImplementedError

    @classmethod
    def keyword_options(cls) -> set[str]:
        """The constructor's named arguments (besides d_model) and the class's ``options``."""
        params = inspect.signature(MatrixMixer.__init__).parameters
        named = {k for k, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD and k not in ("self", "d_model")}
        return named | set(cls.options)

    # ---- construction --------------------------------------------------------------
    def __new__(cls, *args, **kwargs):
        # The factory: MatrixMixer("toeplitz", ...) makes a ToeplitzMixer (Python then runs its __init__).
        if cls is MatrixMixer:
            name = args[0] if args else kwargs.get("matrix_mixer_type")
            if name is None:
                raise ValueError(f"MatrixMixer needs matrix_mixer_type, one of {matrix_mixer_types()}")
            try:
                sub = get_mixer_class(name)
            except ValueError:
                sub = None
            if sub is None or not issubclass(sub, MatrixMixer) or sub is MatrixMixer:
                known = matrix_mixer_types()
                raise ValueError(f"unknown matrix_mixer_type {name!r}{did_you_mean(name, known) or ';'} "
                                 f"known types: {', '.join(known)}")
            cls = sub
        return super().__new__(cls)

    def __init__(
        self,
        # the reference layer's arguments, in its order (the first five are passed positionally)
        matrix_mixer_type=None, is_data_dependent=None, d_model=None, qk_dim=16, max_seq_len=None,
        d_conv=7, conv_init=None, expand=2, headdim=128, activation="swish", bias=False, conv_bias=True,
        chunk_size=None, layer_idx=None, device=None, dtype=None,
        **options,  # the class's own options
    ):
        super().__init__()
        cls = type(self)
        name = cls.mixer_name
        if matrix_mixer_type is not None and matrix_mixer_type != name:
            raise ValueError(f"{cls.__name__} is the {name!r} mixer, got matrix_mixer_type={matrix_mixer_type!r}")
        check_options(f"the {name!r} mixer", options, cls.keyword_options())
        for key, default in cls.options.items():
            value = options.get(key, default)
            if isinstance(default, bool):
                check_bool(key, value)
            setattr(self, key, value)
        if is_data_dependent is None:
            is_data_dependent = "sam" in cls.forms
        if not isinstance(is_data_dependent, bool):
            raise ValueError(f"is_data_dependent must be a bool, got {is_data_dependent!r}")
        form = "sam" if is_data_dependent else "di"
        if form not in cls.forms:
            what = "data-dependent" if is_data_dependent else "data-independent"
            raise ValueError(f"the {name!r} mixer has no {what} form (is_data_dependent={is_data_dependent})")
        if chunk_size is None:
            chunk_size = cls.default_chunk_size
        check_positive_ints(d_model=d_model, qk_dim=qk_dim, d_conv=d_conv, expand=expand, headdim=headdim,
                            chunk_size=chunk_size)
        check_float_dtype(dtype)
        check_bool("bias", bias)
        check_bool("conv_bias", conv_bias)
        if conv_init is not None:
            check_number("conv_init", conv_init, low=0, low_open=True, what="a positive number or None")
        check_positive_int("max_seq_len", max_seq_len, allow_none=True)
        if max_seq_len is None and (not is_data_dependent or cls.scale_uses_max_seq_len):
            why = "the data-independent form learns a matrix of that size" if not is_data_dependent \
                else "its output scale is defined through it"
            raise ValueError(f"the {name!r} mixer needs max_seq_len ({why})")
        check_layer_sizes(d_model, expand, headdim, d_conv, activation)

        factory = {"device": device, "dtype": dtype}
        self.matrix_mixer_type, self.is_data_dependent, self.max_seq_len = name, is_data_dependent, max_seq_len
        # widths: d_model -> d_inner = nheads * headdim; q, k, B, C have qk_dim per head, d_state in all
        self.d_model, self.expand, self.d_inner = d_model, expand, expand * d_model
        self.headdim, self.nheads = headdim, self.d_inner // headdim
        self.qk_dim, self.d_state = qk_dim, self.nheads * qk_dim
        self.d_conv, self.conv_init, self.activation = d_conv, conv_init, activation
        self.chunk_size, self.layer_idx = chunk_size, layer_idx

        self.matrix_mixer = nn.Module()
        self.init_params(self.matrix_mixer, factory)
        # in_proj columns: [z (d_inner) | v (d_inner), conv features | direct features]
        self._conv_feats = self._widths(cls.conv_features) if is_data_dependent else {}
        self._direct_feats = self._widths(cls.direct_features) if is_data_dependent else {}
        conv_dim = self.d_inner + sum(self._conv_feats.values())
        d_in_proj = self.d_inner + conv_dim + sum(self._direct_feats.values())
        self.in_proj, self.conv1d = in_proj_and_conv(d_model, d_in_proj, conv_dim, d_conv, conv_init, bias, conv_bias,
                                                     factory)
        self.act = nn.SiLU()
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _widths(self, features: dict[str, str]) -> dict[str, int]:
        """{name: width attribute} -> {name: channels} for this layer."""
        return {name: getattr(self, width) for name, width in features.items()}

    # ---- shared plumbing ------------------------------------------------------------
    def _check(self, u, attention_mask):
        mask = check_padded_input(u, self.d_model, attention_mask, self.in_proj.weight.dtype)
        if not self.is_data_dependent and u.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence length {u.shape[1]} exceeds max_seq_len={self.max_seq_len} of the "
                             f"data-independent {self.matrix_mixer_type!r} mixer")
        return mask

    def _streams(self, u, mask):
        """in_proj, masked conv, activation; returns z, v (B, L, H, P) and the feature dict."""
        conv_dim = self.conv1d.in_channels
        z, xc, direct = torch.split(self.in_proj(u), [self.d_inner, conv_dim, self.in_proj.out_features - self.d_inner - conv_dim], dim=-1)
        if mask is not None:
            xc = xc * mask[..., None].to(xc.dtype)  # padding acts as the conv's zero padding
        xc = self.conv1d(xc.transpose(1, 2)).transpose(1, 2)
        v, fc = torch.split(xc, [self.d_inner, conv_dim - self.d_inner], dim=-1)
        v = self.act(v)
        if self.activate_features:
            fc = self.act(fc)
        if mask is not None:
            v = v * mask[..., None].to(v.dtype)
        feats = dict(zip(self._conv_feats, torch.split(fc, list(self._conv_feats.values()), dim=-1)))
        feats.update(zip(self._direct_feats, torch.split(direct, list(self._direct_feats.values()), dim=-1)))
        return z, rearrange(v, "b l (h p) -> b l h p", p=self.headdim), feats

    def forward(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = self._check(u, attention_mask)
        if u.shape[0] == 0:  # no sequences: an empty output, still attached to out_proj for autograd
            return self.out_proj(u.new_zeros(0, u.shape[1], self.d_inner))
        shift = None
        if mask is not None:
            shift = rotation(mask)
            u, mask = roll_rows(u, shift), roll_rows(mask, shift)
        z, v, feats = self._streams(u, mask)
        y = self.mix(v, feats, mask)
        out = self.out_proj(self.norm(rearrange(y, "b l h p -> b l (h p)"), z))
        if mask is not None:
            out = roll_rows(out * mask[..., None].to(out.dtype), -shift)
        return out

    def materialize(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, H, L, L) matrix applied per head to the value stream v
        (after conv and activation); rows and columns of padded positions are zero."""
        mask = self._check(u, attention_mask)
        if u.shape[0] == 0:
            return u.new_zeros(0, self.nheads, u.shape[1], u.shape[1])
        if mask is None:
            _, v, feats = self._streams(u, None)
            return self.matrix(v, feats, None)
        shift = rotation(mask)
        u, mask_r = roll_rows(u, shift), roll_rows(mask, shift)
        _, v, feats = self._streams(u, mask_r)
        M = self.matrix(v, feats, mask_r)
        keep = mask_r[:, None, :, None] & mask_r[:, None, None, :]
        M = M * keep.to(M.dtype)
        return roll_rows(roll_rows(M, -shift, dim=2), -shift, dim=3)

    # ---- helpers for subclasses --------------------------------------------------
    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, L, H*D) -> (B, L, H, D)."""
        return rearrange(t, "b l (h d) -> b l h d", h=self.nheads)

    @staticmethod
    def _plus_identity(M: torch.Tensor) -> torch.Tensor:
        return M + torch.eye(M.shape[-1], device=M.device, dtype=M.dtype)

    def extra_repr(self) -> str:
        return (f"type={self.matrix_mixer_type!r}, data_dependent={self.is_data_dependent}, d_model={self.d_model}, "
                f"nheads={self.nheads}, headdim={self.headdim}, qk_dim={self.qk_dim}, max_seq_len={self.max_seq_len}")
