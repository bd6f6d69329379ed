"""The matrix-mixer family: one layer, many structured matrix classes.

Every mixer here is the same layer around a different sequence matrix ``M``::

    z | v, features | direct = in_proj(u)
    v, features = act(conv1d(v, features))          # depthwise, non-causal
    y[:, :, h] = M_h(v, features) @ v[:, :, h]      # per head, the "matrix" part
    out = out_proj(rmsnorm(y) * weight * silu(z))

:class:`MatrixMixer` implements the shared plumbing once (``in_proj``,
``conv1d``, ``norm``, ``out_proj``, padding, validation). A matrix class is a
small subclass that declares its projection sizes and implements two methods,
``mix`` (the fast path) and ``matrix`` (the explicit ``(B, H, L, L)`` matrix);
it is found by name through the registry. ``MatrixMixer("toeplitz", ...)``
dispatches to the class registered as ``"toeplitz"`` with the constructor,
argument names and parameter names of the reference Hydra repository's
``MatrixMixer`` (goombalab/hydra), so its state_dicts load with
``strict=True`` and give the same outputs.

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
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._checks import (
    check_bool,
    check_choice,
    check_float_dtype,
    check_number,
    check_options,
    check_positive_int,
    check_sequence_input,
    did_you_mean,
)
from ..ops import quasiseparable_chunked, quasiseparable_matrix, semiseparable_chunked, semiseparable_matrix
from ..ops.cauchy import cauchy_matrix, cauchy_mix
from ..ops.low_rank import low_rank_matrix, low_rank_mix
from ..ops.toeplitz import toeplitz_fft, toeplitz_matrix
from ..ops.vandermonde import dft_cos_matrix, dft_cos_mix, vandermonde_matrix, vandermonde_mix
from .hydra import ACTIVATIONS, check_contiguous_mask
from .norm import GatedRMSNorm
from .registry import SequenceMixer, accepted_options, get_mixer_class, register_mixer

__all__ = [
    "MatrixMixer",
    "matrix_mixer_types",
    "DenseMixer",
    "ToeplitzMixer",
    "VandermondeMixer",
    "CauchyMixer",
    "LowRankMixer",
    "AttentionMixer",
    "QuasiseparableMixer",
    "SemiseparableMixer",
]


def matrix_mixer_types() -> list[str]:
    """Names of the registered :class:`MatrixMixer` classes."""
    from .registry import _MIXERS

    return sorted(name for name, cls in _MIXERS.items() if issubclass(cls, MatrixMixer) and cls.mixer_name == name)


# --------------------------------------------------------------------------- padding
def _rotation(mask: torch.Tensor) -> torch.Tensor:
    """Per-row index of the first valid token (0 for rows without one)."""
    length = mask.shape[1]
    idx = torch.arange(length, device=mask.device)
    first = torch.where(mask, idx, length).amin(1)
    return torch.where(first == length, torch.zeros_like(first), first)


def _roll_rows(t: torch.Tensor, shift: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``out[b, i] = t[b, (i + shift[b]) % L]`` along ``dim`` (batch is dim 0)."""
    length = t.shape[dim]
    idx = (torch.arange(length, device=t.device)[None] + shift[:, None]) % length  # (B, L)
    shape = [t.shape[0]] + [1] * (t.dim() - 1)
    shape[dim] = length
    return t.gather(dim, idx.view(shape).expand_as(t))


class MatrixMixer(SequenceMixer):
    """A matrix-mixer layer ``(B, L, d_model) -> (B, L, d_model)``.

    ``MatrixMixer(matrix_mixer_type, is_data_dependent, d_model, qk_dim, max_seq_len=None, ...)``
    builds the class registered under ``matrix_mixer_type`` (see
    :func:`matrix_mixer_types`); the subclasses can also be built directly, or
    by name with :func:`hydra_ssm.build_mixer`.

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
      (``"silu"``/``"swish"``), ``bias``, ``conv_bias``, ``chunk_size``,
      ``layer_idx``, ``device``, ``dtype``.

    ``forward(u, attention_mask=None)`` and ``materialize(u, attention_mask=None)``,
    the ``(B, H, L, L)`` matrix applied to the value stream ``v`` (after conv
    and activation), so ``forward`` equals ``out_proj(norm(M @ v, z))``.

    Inputs: ``u`` must have the parameters' dtype, except under
    ``torch.autocast`` (no silent conversion). A batch of 0 sequences returns
    an empty ``(0, L, d_model)`` output; ``L = 0`` is an error. Unknown options
    raise a ValueError naming the closest accepted one.

    Writing a new class: subclass, register, declare sizes, implement ``mix``
    (and ``matrix``); see docs/mixers.md.
    """

    # ---- what a subclass declares -------------------------------------------------
    #: forms the class has: "sam" (data-dependent) and/or "di" (data-independent)
    forms: tuple[str, ...] = ("sam", "di")
    #: True when the output scale is defined through max_seq_len (also for SAM)
    scale_uses_max_seq_len: bool = False
    #: True when the activation also applies to the conv features (not only to v)
    activate_features: bool = False
    #: True when the matrix is lower triangular (a causal mixer)
    causal: bool = False
    #: extra keyword options of the class and their defaults
    options: dict = {}

    def conv_features(self) -> dict[str, int]:
        """Feature streams (name -> channels) that go through the conv with v."""
        return {}

    def direct_features(self) -> dict[str, int]:
        """Feature streams (name -> channels) taken from in_proj without the conv."""
        return {}

    def init_params(self, inner: nn.Module, factory: dict) -> None:
        """Create the class's own parameters on ``inner`` (state_dict prefix ``matrix_mixer.``)."""

    def mix(self, v: torch.Tensor, feats: dict, mask: torch.Tensor | None) -> torch.Tensor:
        """Fast path: (B, L, H, P) -> (B, L, H, P). ``mask`` is right-padded (valid run first) or None."""
        raise NotImplementedError

    def matrix(self, v: torch.Tensor, feats: dict, mask: torch.Tensor | None) -> torch.Tensor:
        """The explicit (B, H, L, L) matrix that :meth:`mix` applies to v."""
        raise NotImplementedError

    # ---- construction --------------------------------------------------------------
    def __new__(cls, *args, **kwargs):
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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A per-class __init__ whose signature lists the class's own options, so that
        # build_mixer(..., strict=False) can filter a bundle of options by name.
        base = MatrixMixer.__init__
        options = dict(cls.options)

        def __init__(self, *args, **kw):
            base(self, *args, **kw)

        params = [p for p in inspect.signature(base).parameters.values() if p.kind is not p.VAR_KEYWORD]
        params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in options.items()]
        __init__.__signature__ = inspect.Signature(params)
        __init__.__doc__ = cls.__doc__
        cls.__init__ = __init__

    def __init__(
        self,
        matrix_mixer_type=None,
        is_data_dependent=None,
        d_model=None,
        qk_dim=16,
        max_seq_len=None,
        d_conv=7,
        conv_init=None,
        expand=2,
        headdim=128,
        activation="swish",
        bias=False,
        conv_bias=True,
        chunk_size=256,
        layer_idx=None,
        device=None,
        dtype=None,
        **options,
    ):
        super().__init__()
        cls = type(self)
        name = cls.mixer_name
        if matrix_mixer_type is not None and matrix_mixer_type != name:
            raise ValueError(f"{cls.__name__} is the {name!r} mixer, got matrix_mixer_type={matrix_mixer_type!r}")
        check_options(f"the {name!r} mixer", options, accepted_options(cls))
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
        for arg, value in (("d_model", d_model), ("qk_dim", qk_dim), ("d_conv", d_conv), ("expand", expand),
                           ("headdim", headdim), ("chunk_size", chunk_size)):
            check_positive_int(arg, value)
        check_float_dtype(dtype)
        check_bool("bias", bias)
        check_bool("conv_bias", conv_bias)
        if conv_init is not None:
            check_number("conv_init", conv_init, low=0, low_open=True, what="a positive number or None")
        if max_seq_len is not None and (not isinstance(max_seq_len, int) or isinstance(max_seq_len, bool) or max_seq_len <= 0):
            raise ValueError(f"max_seq_len must be a positive integer or None, got {max_seq_len!r}")
        if max_seq_len is None and (not is_data_dependent or cls.scale_uses_max_seq_len):
            why = "the data-independent form learns a matrix of that size" if not is_data_dependent \
                else "its output scale is defined through it"
            raise ValueError(f"the {name!r} mixer needs max_seq_len ({why})")
        if d_conv % 2 == 0:
            raise ValueError(f"d_conv must be odd so the non-causal convolution keeps the length, got {d_conv}")
        if (expand * d_model) % headdim != 0:
            raise ValueError(f"expand * d_model ({expand} * {d_model} = {expand * d_model}) must be divisible by headdim ({headdim})")
        check_choice("activation", activation, ACTIVATIONS)

        factory = {"device": device, "dtype": dtype}
        self.matrix_mixer_type = name
        self.is_data_dependent = is_data_dependent
        self.d_model = d_model
        self.qk_dim = qk_dim
        self.max_seq_len = max_seq_len
        self.d_conv = d_conv
        self.conv_init = conv_init
        self.expand = expand
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        self.d_state = self.nheads * qk_dim
        self.activation = activation
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx

        self.matrix_mixer = nn.Module()
        self.init_params(self.matrix_mixer, factory)
        self._conv_feats = self.conv_features() if is_data_dependent else {}
        self._direct_feats = self.direct_features() if is_data_dependent else {}
        conv_dim = self.d_inner + sum(self._conv_feats.values())
        d_in_proj = self.d_inner + conv_dim + sum(self._direct_feats.values())
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv // 2,
                                bias=conv_bias, **factory)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.act = nn.SiLU()
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # ---- shared plumbing ------------------------------------------------------------
    def _check(self, u, attention_mask):
        mask = check_sequence_input(u, self.d_model, attention_mask, dtype=self.in_proj.weight.dtype)
        if not self.is_data_dependent and u.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence length {u.shape[1]} exceeds max_seq_len={self.max_seq_len} of the "
                             f"data-independent {self.matrix_mixer_type!r} mixer")
        if mask is not None:
            check_contiguous_mask(mask)
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
            shift = _rotation(mask)
            u, mask = _roll_rows(u, shift), _roll_rows(mask, shift)
        z, v, feats = self._streams(u, mask)
        y = self.mix(v, feats, mask)
        out = self.out_proj(self.norm(rearrange(y, "b l h p -> b l (h p)"), z))
        if mask is not None:
            out = _roll_rows(out * mask[..., None].to(out.dtype), -shift)
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
        shift = _rotation(mask)
        u, mask_r = _roll_rows(u, shift), _roll_rows(mask, shift)
        _, v, feats = self._streams(u, mask_r)
        M = self.matrix(v, feats, mask_r)
        keep = mask_r[:, None, :, None] & mask_r[:, None, None, :]
        M = M * keep.to(M.dtype)
        return _roll_rows(_roll_rows(M, -shift, dim=2), -shift, dim=3)

    def value_stream(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """(z, v): the gate (B, L, d_inner) and the value stream (B, L, H, P) that
        :meth:`materialize`'s matrix applies to (unpadded input only)."""
        self._check(u, None)
        z, v, _ = self._streams(u, None)
        return z, v

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


def _work(v: torch.Tensor) -> torch.dtype:
    """dtype of explicit matrices: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if v.dtype == torch.float64 else torch.float32


# =========================================================================== classes
class _QKFeatures:
    """Types whose SAM form reads q and k (d_state channels each) from the conv and
    whose DI form may learn per-position ``q_matrix``, ``k_matrix`` (max_seq_len, H, qk_dim)."""

    def conv_features(self):
        return {"q": self.d_state, "k": self.d_state}

    def _init_learned_qk(self, inner, factory):
        for name in ("q_matrix", "k_matrix"):
            param = nn.Parameter(torch.empty(self.max_seq_len, self.nheads, self.qk_dim, **factory))
            nn.init.xavier_normal_(param)
            setattr(inner, name, param)


@register_mixer("dense")
class DenseMixer(MatrixMixer):
    """Dense: a learned (H, max_seq_len, max_seq_len) matrix per head; data-independent only.

    ``M = M_param[:, :L, :L] / sqrt(max_seq_len) + I``. O(L^2) time and memory.
    """

    forms = ("di",)

    def init_params(self, inner, factory):
        inner.M = nn.Parameter(torch.empty(self.nheads, self.max_seq_len, self.max_seq_len, **factory))
        nn.init.xavier_normal_(inner.M)

    def _M(self, length):
        return self.matrix_mixer.M[:, :length, :length] / math.sqrt(self.max_seq_len)

    def mix(self, v, feats, mask):
        return torch.einsum("hij,bjhp->bihp", self._M(v.shape[1]).to(v.dtype), v) + v

    def matrix(self, v, feats, mask):
        return self._plus_identity(self._M(v.shape[1])).expand(v.shape[0], -1, -1, -1)


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

    def conv_features(self):
        return {"f": self.nheads, "r": self.nheads}

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


class _DFTHolder(nn.Module):
    """Holds the state_dict entry ``dft_matrix`` (max_seq_len x max_seq_len cosines)
    without keeping it in memory: saved on demand, checked and dropped on load.

    Two loaders reach it: ``nn.Module.load_state_dict`` (through
    ``_load_from_state_dict``) and transformers' ``from_pretrained``, which
    reads ``holder.dft_matrix`` for its shape and then assigns the loaded
    tensor to it; both check the tensor against the DFT and keep nothing.
    """

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def _mismatch(self, key: str, value: torch.Tensor) -> str | None:
        """Why ``value`` cannot stand for the DFT entry ``key``, or None when it is that DFT."""
        if tuple(value.shape) != (self.n, self.n):
            return f"size mismatch for {key}: expected {(self.n, self.n)}, got {tuple(value.shape)}"
        if value.device.type == "meta":
            return None
        # this layer always applies the exact DFT: a stored matrix that is not that DFT would be silently replaced
        err, tol = float("inf"), 0.0
        if value.is_floating_point():
            expected = dft_cos_matrix(self.n, self.n, value.device, torch.float64)
            err = float((value.detach().to(torch.float64) - expected).abs().max())
            tol = max(1e-3, 4 * torch.finfo(value.dtype).eps)  # rounding of a saved low-precision copy
        if err <= tol:
            return None
        return (f"{key} differs from the cosine DFT of size {self.n} (max abs difference {err:.3g}): the "
                "vandermonde mixer with is_dft=True always applies the exact DFT, so this state_dict "
                "holds a different matrix (a corrupted file, or a layer trained with a learned matrix)")

    def __getattr__(self, name):
        if name == "dft_matrix":  # shape only, for loaders that compare shapes before assigning
            return torch.empty(self.n, self.n, device="meta")
        return super().__getattr__(name)

    def __setattr__(self, name, value):
        if name == "dft_matrix":  # a loader assigning the stored entry: check it, keep nothing
            problem = self._mismatch(name, value)
            if problem:
                raise ValueError(problem)
            return
        super().__setattr__(name, value)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "dft_matrix"] = dft_cos_matrix(self.n, self.n)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "dft_matrix"
        if key in state_dict:
            problem = self._mismatch(key, state_dict.pop(key))
            if problem:
                error_msgs.append(problem)
        elif strict:
            missing_keys.append(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


@register_mixer("vandermonde")
class VandermondeMixer(_QKFeatures, MatrixMixer):
    """Vandermonde (cosine) mixer, ``M = scale * V + I``.

    - DI with ``is_dft=True`` (the default, as in the reference layer):
      ``V[t, l] = cos(2 pi t l / max_seq_len)``, scale ``1/sqrt(max_seq_len)``,
      applied by FFT in O(max_seq_len log max_seq_len). The state_dict carries the
      ``dft_matrix`` entry of the reference layout; it is generated on save and
      not kept in memory.
    - DI with ``is_dft=False``: learned frequencies ``q_bias``, ``k_bias``
      (H, qk_dim, max_seq_len), ``V[t, l] = sum_d cos(2 pi q[d, t] l) + cos(2 pi k[d, l] t)``,
      scale ``1/sqrt(2 max_seq_len qk_dim)``. This mixes over l, the evident
      intent; the reference's einsum for this (unused) option sums each row
      into a diagonal instead.
    - SAM: ``V[t, l] = sum_d cos(2 pi eps q_t[d] l) - cos(2 pi eps k_l[d] t)``
      with q, k from the conv (not activated), eps = 1e-3, scale
      ``1/sqrt(2 max_seq_len qk_dim)``.

    The SAM and learned DI forms are quadratic in time, tiled so memory is O(L * tile).
    """

    scale_uses_max_seq_len = True
    options = {"is_dft": True}
    eps = 1e-3

    def init_params(self, inner, factory):
        if self.is_data_dependent:
            return
        if self.is_dft:
            self.matrix_mixer = inner = _DFTHolder(self.max_seq_len)
        else:
            inner.q_bias = nn.Parameter(torch.zeros(self.nheads, self.qk_dim, self.max_seq_len, **factory))
            inner.k_bias = nn.Parameter(torch.zeros(self.nheads, self.qk_dim, self.max_seq_len, **factory))

    def _scale(self):
        if not self.is_data_dependent and self.is_dft:
            return 1.0 / math.sqrt(self.max_seq_len)
        return 1.0 / math.sqrt(2 * self.max_seq_len * self.qk_dim)

    def _qk(self, feats, length):
        """Frequencies (.., L, H, D) and the sign of the k term."""
        if self.is_data_dependent:
            return self._heads(feats["q"]) * self.eps, self._heads(feats["k"]) * self.eps, -1.0
        q = self.matrix_mixer.q_bias[:, :, :length].permute(2, 0, 1)
        k = self.matrix_mixer.k_bias[:, :, :length].permute(2, 0, 1)
        return q, k, 1.0

    def mix(self, v, feats, mask):
        if not self.is_data_dependent and self.is_dft:
            return dft_cos_mix(v, self.max_seq_len) * self._scale() + v
        q, k, sign = self._qk(feats, v.shape[1])
        return vandermonde_mix(v, q, k, sign) * self._scale() + v

    def matrix(self, v, feats, mask):
        b, length = v.shape[:2]
        if not self.is_data_dependent and self.is_dft:
            V = dft_cos_matrix(length, self.max_seq_len, v.device, _work(v))[None, None]
            V = V.expand(b, self.nheads, -1, -1)
        else:
            q, k, sign = self._qk(feats, length)
            V = vandermonde_matrix(q.to(_work(v)), k.to(_work(v)), sign).expand(b, -1, -1, -1)
        return self._plus_identity(V * self._scale())


@register_mixer("cauchy")
class CauchyMixer(_QKFeatures, MatrixMixer):
    """Cauchy mixer, ``M[t, l] = scale * sum_d 1 / (q_t[d] + k_l[d] + 1e-8) + delta_tl``,
    scale ``1/sqrt(max_seq_len qk_dim)``.

    DI: ``q = exp(q_matrix)``, ``k = exp(k_matrix)`` from learned (max_seq_len, H, qk_dim).
    SAM: ``q = exp(q) + bias``, ``k = exp(k) + bias`` from the conv features (not
    activated), with a learned scalar ``bias`` (0.5 at init).
    Quadratic time, tiled so memory is O(L * tile).
    """

    scale_uses_max_seq_len = True
    tol = 1e-8

    def init_params(self, inner, factory):
        if self.is_data_dependent:
            inner.bias = nn.Parameter(torch.tensor(0.5, **factory))
        else:
            self._init_learned_qk(inner, factory)

    def _qk(self, feats, length):
        if self.is_data_dependent:
            bias = self.matrix_mixer.bias
            return torch.exp(self._heads(feats["q"])) + bias, torch.exp(self._heads(feats["k"])) + bias
        return torch.exp(self.matrix_mixer.q_matrix[:length]), torch.exp(self.matrix_mixer.k_matrix[:length])

    def _scale(self):
        return 1.0 / math.sqrt(self.max_seq_len * self.qk_dim)

    def mix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[1])
        return cauchy_mix(v, q, k, self.tol) * self._scale() + v

    def matrix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[1])
        C = cauchy_matrix(q.to(_work(v)), k.to(_work(v)), self.tol).expand(v.shape[0], -1, -1, -1)
        return self._plus_identity(C * self._scale())


@register_mixer("low_rank")
class LowRankMixer(_QKFeatures, MatrixMixer):
    """Low-rank mixer, ``M = scale * Q K^T + I`` per head, scale ``1/sqrt(max_seq_len qk_dim)``,
    computed as ``Q (K^T v)`` in O(L).

    DI: learned ``q_matrix``, ``k_matrix`` (max_seq_len, H, qk_dim).
    SAM: q, k from the conv, activated like v.
    """

    scale_uses_max_seq_len = True
    activate_features = True

    def init_params(self, inner, factory):
        if not self.is_data_dependent:
            self._init_learned_qk(inner, factory)

    def _qk(self, feats, length):
        if self.is_data_dependent:
            return self._heads(feats["q"]), self._heads(feats["k"])
        return self.matrix_mixer.q_matrix[:length], self.matrix_mixer.k_matrix[:length]

    def _scale(self):
        return 1.0 / math.sqrt(self.max_seq_len * self.qk_dim)

    def mix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[1])
        return low_rank_mix(v, q, k) * self._scale() + v

    def matrix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[1])
        return self._plus_identity(low_rank_matrix(q, k).expand(v.shape[0], -1, -1, -1) * self._scale())


@register_mixer("attention")
class AttentionMixer(_QKFeatures, MatrixMixer):
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

    @staticmethod
    def _key_mask(mask):
        if mask is None:
            return None
        keys = mask | ~mask.any(1, keepdim=True)  # rows without a valid token: attend anywhere (output is zeroed)
        return keys[:, None, None, :]

    def mix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[0], v.shape[1])
        vh = v.transpose(1, 2)
        # Fused SDPA kernels (O(L) memory) need q, k, v of one head size and a unit stride in the
        # last dim; otherwise PyTorch silently takes the math path, which builds (B, H, L, L)
        # weights. q, k come from the conv output (channel stride L) or are broadcast over the
        # batch, and F.pad by zero is a no-op view, so pad and then force a contiguous copy.
        e = max(self.qk_dim, self.headdim)
        q, k = (F.pad(t.to(v.dtype), (0, e - self.qk_dim)).contiguous() for t in (q, k))
        y = F.scaled_dot_product_attention(q, k, F.pad(vh, (0, e - self.headdim)).contiguous(), attn_mask=self._key_mask(mask),
                                           scale=1.0 / math.sqrt(self.qk_dim))
        return y[..., : self.headdim].transpose(1, 2) + v

    def matrix(self, v, feats, mask):
        q, k = self._qk(feats, v.shape[0], v.shape[1])
        s = torch.einsum("bhid,bhjd->bhij", q.to(_work(v)), k.to(_work(v))) / math.sqrt(self.qk_dim)
        km = self._key_mask(mask)
        if km is not None:
            s = s.masked_fill(~km, float("-inf"))
        return self._plus_identity(torch.softmax(s, dim=-1))


class _SSMMixin:
    """Shared parameters of the state space classes: dt_bias, A_log, D (and DI's learned B, C)."""

    def _ssm_params(self, inner, factory, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4):
        if not self.is_data_dependent:
            inner.BC = nn.Parameter(torch.empty(self.max_seq_len, 2 * self.d_state, **factory))
            nn.init.xavier_normal_(inner.BC)
        dt = torch.exp(torch.rand(self.nheads, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        inner.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        inner.dt_bias._no_weight_decay = True
        inner.A_log = nn.Parameter(torch.zeros(self.nheads, device=factory["device"], dtype=factory["dtype"]))
        inner.A_log._no_weight_decay = True
        inner.D = nn.Parameter(torch.ones(self.nheads, **factory))
        inner.D._no_weight_decay = True

    def _A(self):
        return -torch.exp(self.matrix_mixer.A_log.to(torch.promote_types(self.matrix_mixer.A_log.dtype, torch.float32)))

    def _BC(self, feats, v):
        """B, C as (B or 1, L, 1, N) (one group)."""
        if self.is_data_dependent:
            return feats["B"][:, :, None], feats["C"][:, :, None]
        bc = self.matrix_mixer.BC[: v.shape[1]].to(v.dtype)
        B, C = bc[None, :, None].split([self.d_state, self.d_state], dim=-1)
        return B.expand(v.shape[0], -1, -1, -1), C.expand(v.shape[0], -1, -1, -1)

    def _dt(self, feats, v, ndir):
        """softplus(dt + dt_bias), (B, L, ndir, H), zero at padding."""
        w = torch.promote_types(v.dtype, torch.float32)
        bias = self.matrix_mixer.dt_bias.to(w)
        if self.is_data_dependent:
            raw = rearrange(feats["dt"].to(w), "b l (two h) -> b l two h", two=ndir) + bias
        else:
            raw = bias.expand(v.shape[0], v.shape[1], ndir, -1)
        return F.softplus(raw)


@register_mixer("quasiseparable")
class QuasiseparableMixer(_SSMMixin, MatrixMixer):
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

    activate_features = True

    def conv_features(self):
        return {"B": self.d_state, "C": self.d_state}

    def direct_features(self):
        return {"dt": 2 * self.nheads}

    def init_params(self, inner, factory):
        self._ssm_params(inner, factory)
        inner.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False, **factory)

    def _args(self, v, feats, mask):
        B, C = self._BC(feats, v)
        dt = self._dt(feats, v, 2)
        if mask is not None:
            dt = dt * mask[..., None, None]  # no input and no decay at padding
            C = C * mask[..., None, None].to(C.dtype)  # nothing read out at padding
        D = F.linear(rearrange(v, "b l h p -> b l (h p)"), self.matrix_mixer.fc_D.weight, self.matrix_mixer.D.to(v.dtype))
        return dt[:, :, 0], dt[:, :, 1], self._A(), B, C, D

    def mix(self, v, feats, mask):
        dt_f, dt_b, A, B, C, D = self._args(v, feats, mask)
        return quasiseparable_chunked(v, dt_f, dt_b, A, B, C, B, C, D=D, chunk_size=self.chunk_size)

    def matrix(self, v, feats, mask):
        dt_f, dt_b, A, B, C, D = self._args(v, feats, mask)
        return quasiseparable_matrix(dt_f, dt_b, A, B, C, B, C, D=D)


@register_mixer("semiseparable")
class SemiseparableMixer(_SSMMixin, MatrixMixer):
    """Semiseparable (causal SSD, Mamba-2) mixer, O(L) by
    :func:`hydra_ssm.ops.semiseparable_chunked`::

        M[i, j] = C[i] . B[j] dt[j] prod_{k=j+1..i} a[k]   (j <= i),   plus D on the diagonal

    SAM: B, C (activated) and dt (H columns) from in_proj; DI: learned ``BC``
    (max_seq_len, 2 d_state), dt = softplus(dt_bias). Causal: with a
    depthwise conv that is non-causal (as in all classes here), the layer as a
    whole sees ``d_conv // 2`` tokens ahead.
    """

    activate_features = True
    causal = True

    def conv_features(self):
        return {"B": self.d_state, "C": self.d_state}

    def direct_features(self):
        return {"dt": self.nheads}

    def init_params(self, inner, factory):
        self._ssm_params(inner, factory)

    def _args(self, v, feats, mask):
        B, C = self._BC(feats, v)
        dt = self._dt(feats, v, 1)[:, :, 0]
        if mask is not None:
            dt = dt * mask[..., None]
        return dt, self._A(), B, C

    def mix(self, v, feats, mask):
        dt, A, B, C = self._args(v, feats, mask)
        y = semiseparable_chunked(v, dt.to(v.dtype), A, B, C, chunk_size=self.chunk_size)
        return y + v * self.matrix_mixer.D.to(v.dtype)[:, None]

    def matrix(self, v, feats, mask):
        dt, A, B, C = self._args(v, feats, mask)
        w = _work(v)
        M = semiseparable_matrix(dt.to(w), A.to(w), B.to(w), C.to(w))
        return M + torch.diag_embed(self.matrix_mixer.D.to(w).expand(v.shape[1], -1).T)
