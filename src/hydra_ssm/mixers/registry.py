"""Registry of sequence mixers.

Every mixer is one ``nn.Module`` class registered under a name::

    from hydra_ssm.mixers import SequenceMixer, register_mixer

    @register_mixer("my_mixer")
    class MyMixer(SequenceMixer):
        def __init__(self, d_model, **kwargs): ...
        def forward(self, u, attention_mask=None): ...

and is then built by name with :func:`build_mixer`. Packed batches (one row and its
``cu_seqlens``) reach a mixer through :meth:`SequenceMixer.forward_packed`, which
works for every mixer that honours ``attention_mask``; a mixer may override it. Nothing in the library
branches on mixer names: what the models and the training code need to know
about a mixer are class attributes of :class:`SequenceMixer`, which a new
mixer sets (or leaves at their defaults).
"""

from __future__ import annotations

import inspect
from typing import Callable, TypeVar

import torch
from torch import nn

from .._checks import check_options, did_you_mean
from ..ops._layout import PackedLayout
from ..ops._shapes import check_cu_seqlens

_MIXERS: dict[str, type["SequenceMixer"]] = {}

T = TypeVar("T", bound=type)


def _signature_options(cls: type) -> set[str] | None:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {k for k, p in params.items() if k not in ("self", "d_model") and p.kind is not inspect.Parameter.VAR_POSITIONAL}


class SequenceMixer(nn.Module):
    """Base class of all mixers: ``(B, L, d_model) -> (B, L, d_model)``.

    ``attention_mask`` is ``(B, L)``, 1 (or True) for a valid token. Outputs at
    valid positions must not depend on padded ones.
    """

    #: the registered name (set by :func:`register_mixer`)
    mixer_name: str = ""
    #: True when the mixer tells positions apart by itself (a scan, a kernel indexed by lag), so
    #: models need no position embeddings: ``hydra-ssm train --position-embeddings auto`` adds them
    #: only for mixers with ``position_aware = False`` (the default).
    position_aware: bool = False
    #: forms the mixer has: "sam" (its matrix computed from the input) and/or "di" (a learned matrix
    #: sized by ``max_seq_len``; the constructor then takes ``is_data_dependent`` and ``max_seq_len``).
    #: Default: data-dependent only.
    forms: tuple[str, ...] = ("sam",)
    #: True when ``forward(u_shard, context_parallel_group=group)`` computes this rank's shard of sequences
    #: split over the ranks of a ``torch.distributed`` group (context parallelism; see
    #: ``hydra_ssm.mixers.context_parallel``). Models refuse a group for mixers that leave it False.
    context_parallel: bool = False
    #: True when the mixer has ``stream(u, segment_len, out=None, *, prepare=None, finish=None)``:
    #: ``forward(u)`` computed segment by segment in working memory that does not grow with L (see
    #: :meth:`Hydra.stream`). The models' ``stream_hidden_states`` needs it in every block.
    can_stream: bool = False

    @classmethod
    def keyword_options(cls) -> set[str] | None:
        """Keyword arguments the constructor accepts besides ``d_model``, read from its
        signature; None when it takes ``**kwargs`` (then it checks them itself)."""
        return _signature_options(cls)

    def forward(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def materialize(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The ``(B, H, L, L)`` matrix this mixer applies to its value stream for input ``u``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement materialize()")

    def forward_packed(self, u: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """A packed batch: ``u`` (1, total, d_model) holds sequences back to back, sequence i at
        positions ``cu_seqlens[i] .. cu_seqlens[i+1] - 1`` (int offsets (n + 1,), as in flash-attention).
        Returns (1, total, d_model), each sequence mixed as if it were alone.

        This default unpacks the row into a right-padded batch (n, longest, d_model) with an
        attention mask, runs :meth:`forward`, and packs the valid outputs back: exact for every
        mixer that honours ``attention_mask``, at the padded batch's cost. Mixers with a packed
        path of their own (Hydra) override it.
        """
        lengths = check_packed_row(u, cu_seqlens)
        longest = max(lengths, default=0)
        if longest == 0:  # no token: nothing to mix
            return self(u)
        rows = PackedLayout(lengths, longest, 0, u.device)  # sequence i at row i of a (n, longest) grid
        padded = rows.scatter(u).view(-1, longest, u.shape[-1])
        mask = rows.scatter(torch.ones_like(u[..., 0], dtype=torch.bool)).view(-1, longest)
        out = self(padded, attention_mask=None if bool(mask.all()) else mask)
        return rows.gather(out.reshape(1, -1, out.shape[-1]))


def check_packed_row(u, cu_seqlens) -> list[int]:
    """The sequence lengths of a packed input ``u`` (1, total, d_model) from its offsets (checked)."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"with cu_seqlens, u must be one packed row of shape (1, total, d_model), got {got}")
    return check_cu_seqlens(cu_seqlens, u.shape[0], u.shape[1])


def register_mixer(name: str) -> Callable[[T], T]:
    """Class decorator: register a :class:`SequenceMixer` subclass under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_mixer: name must be a non-empty string, got {name!r}")

    def decorator(cls: T) -> T:
        if name in _MIXERS and _MIXERS[name] is not cls:
            raise ValueError(f"register_mixer: a mixer named {name!r} is already registered ({_MIXERS[name].__name__})")
        cls.mixer_name = name
        _MIXERS[name] = cls
        return cls

    return decorator


def get_mixer_class(name: str) -> type[SequenceMixer]:
    """The class registered under ``name``; a ValueError lists the known names otherwise."""
    try:
        return _MIXERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown mixer {name!r}{did_you_mean(name, _MIXERS) or ';'} registered mixers: "
                         f"{', '.join(sorted(_MIXERS))}") from None


def accepted_options(cls: type) -> set[str] | None:
    """Keyword arguments ``cls(...)`` accepts besides ``d_model`` (see
    :meth:`SequenceMixer.keyword_options`); None when it checks them itself."""
    own = getattr(cls, "keyword_options", None)  # None for a plain nn.Module registered as a mixer
    return own() if own is not None else _signature_options(cls)


def build_mixer(name: str, d_model: int, *, strict: bool = True, **kwargs) -> SequenceMixer:
    """Instantiate the mixer registered under ``name``.

    An option the class does not accept raises a ValueError naming the closest
    accepted one. With ``strict=False``, options that the class does not accept
    but another registered mixer does are dropped, so one bundle of options can
    build any mixer; a name no registered mixer accepts (a typo) still raises.
    """
    cls = get_mixer_class(name)
    accepted = accepted_options(cls)
    if accepted is not None:
        if not strict:
            known = set().union(*(accepted_options(c) or () for c in _MIXERS.values()))
            check_options("any registered mixer", kwargs, known)
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        check_options(f"the {name!r} mixer", kwargs, accepted)
    return cls(d_model=d_model, **kwargs)


def available_mixers() -> list[str]:
    return sorted(_MIXERS)
