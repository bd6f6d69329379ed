"""Input checks shared by the mixers: clear ValueErrors instead of crashes deep inside.

Two kinds of checks. Those of shapes, dtypes and devices read no tensor values and
always run. Value checks (no NaN in the input, a mask of 0/1, dt >= 0, indices in
range) read tensor values on the host: on a GPU that waits for every queued kernel
(a host synchronisation) and breaks CUDA graphs. So they follow one policy, the
*validation mode*, asked through :func:`value_checks_enabled`:

* ``None`` (the default): value checks run on CPU tensors only;
* ``True``: on every device (for debugging; each check is then a synchronisation);
* ``False``: never (NaN then propagates; a bad index fails inside torch).

Set it with :func:`set_validation` or, for a block, :func:`validation`; the
environment variable ``HYDRA_SSM_VALIDATE`` (``1`` or ``0``) sets the mode the
library starts with. Value checks never run while a graph is traced (the values
are not known then), whatever the mode.
"""

from __future__ import annotations

import contextlib
import difflib
import numbers
import os
from typing import Iterable, Iterator

import torch


def exporting() -> bool:
    """True while ``torch.export`` or ``torch.onnx.export`` traces the code: the dynamo ONNX exporter runs
    torch.export, the TorchScript-based one the JIT tracer."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def tracing() -> bool:
    """True while a graph is traced (``torch.compile``, ``torch.export``, ``torch.onnx.export``): checks
    that read tensor values on the host (a sync, and a branch on data) are skipped then."""
    return torch.compiler.is_compiling() or exporting()


def reads_without_sync(t: torch.Tensor) -> bool:
    """True when the host reads ``t``'s values without waiting for a device: a CPU tensor, outside tracing."""
    return not tracing() and t.device.type == "cpu"


def _check_mode(mode) -> None:
    if mode is not None and not isinstance(mode, bool):
        raise ValueError(f"validation mode must be None (check the values of CPU tensors only), True (check them "
                         f"on every device) or False (never check them), got {mode!r}")


def _mode_from_environment() -> bool | None:
    """The validation mode the library starts with: ``HYDRA_SSM_VALIDATE`` 1 (True), 0 (False) or unset (None)."""
    value = os.environ.get("HYDRA_SSM_VALIDATE", "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"HYDRA_SSM_VALIDATE must be 1 (check tensor values on every device), 0 (never check "
                         f"them) or unset (check the values of CPU tensors only), got {value!r}")
    return None if value == "" else value == "1"


_validation_mode = _mode_from_environment()


def get_validation() -> bool | None:
    """The validation mode in force: None (CPU tensors only), True (every device) or False (never)."""
    return _validation_mode


def set_validation(mode: bool | None) -> None:
    """Whether the checks that read tensor values run (module notes): ``None`` for CPU tensors only
    (the default), ``True`` on every device (each check then synchronises a GPU), ``False`` never."""
    global _validation_mode
    _check_mode(mode)
    _validation_mode = mode


@contextlib.contextmanager
def validation(mode: bool | None) -> Iterator[None]:
    """:func:`set_validation` for a ``with`` block, the previous mode restored when the block
    ends (by an exception too): ``with hydra_ssm.validation(True): model(**batch)``."""
    previous = _validation_mode
    set_validation(mode)
    try:
        yield
    finally:
        set_validation(previous)


def value_checks_enabled(t: torch.Tensor) -> bool:
    """Whether a check that reads ``t``'s values runs now: never while tracing, else as the
    validation mode says (None: only when ``t`` is on the CPU)."""
    if _validation_mode is None:
        return reads_without_sync(t)
    return _validation_mode and not tracing()


def did_you_mean(value, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to a mistyped ``value``
    (difflib similarity at least ``cutoff``), or ``""``."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_choice(name: str, value, choices: Iterable) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}{did_you_mean(value, choices)}")


def check_options(owner: str, given: Iterable[str], accepted: Iterable[str]) -> None:
    """Raise a ValueError for the first name in ``given`` that is not in ``accepted``,
    naming the closest accepted one (``owner`` says whose options these are)."""
    accepted = sorted(accepted)
    for key in given:
        if key not in accepted:
            raise ValueError(f"unknown option {key!r} for {owner}{did_you_mean(key, accepted) or '.'} "
                             f"Accepted options: {', '.join(accepted)}")


def check_positive_int(name: str, value, *, allow_none: bool = False) -> None:
    """``value`` an int (not a bool) > 0, or None with ``allow_none``."""
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


def check_positive_ints(**values) -> None:
    """:func:`check_positive_int` for each ``name=value``, in the order given."""
    for name, value in values.items():
        check_positive_int(name, value)


def check_nonnegative_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_number(name: str, value, *, low=None, high=None, low_open=False, what="a number") -> None:
    """``value`` a real number (not a bool) in [low, high] (``(low, high]`` with ``low_open``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_probability(name: str, value) -> None:
    check_number(name, value, low=0, high=1, what="a probability in [0, 1]")


def check_float_dtype(dtype) -> None:
    """``dtype`` argument of a layer: None or a floating-point torch dtype."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point dtype (or None), got {dtype}")


def check_index_tensor(name: str, t, shape: tuple | None = None) -> None:
    """``t`` an integer tensor of rank 2 (batch, seqlen), of ``shape`` when given."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (batch, seqlen), got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, seqlen), got a {t.dim()}-D tensor of shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_index_range(name: str, t: torch.Tensor, high: int, *, ignore: int | None = None) -> None:
    """Every value of ``t`` in [0, high) (or equal to ``ignore``). Reads the values (one
    host sync when they are fine): a value check, run as :func:`value_checks_enabled` says."""
    if t.numel() == 0 or not value_checks_enabled(t):
        return
    ignored = None if ignore is None else t == ignore
    values = t if ignored is None else t.masked_fill(ignored, 0)
    if not bool(((values < 0) | (values >= high)).any()):
        return
    values = t if ignored is None else t[~ignored]
    extra = f" or {ignore} (ignored)" if ignore is not None else ""
    raise ValueError(f"{name} must be in [0, {high}){extra}, got values in [{int(values.min())}, {int(values.max())}]")


def check_sequence_input(
    u: torch.Tensor,
    d_model: int,
    attention_mask: torch.Tensor | None = None,
    *,
    name: str = "u",
    check_finite: bool = True,
    dtype: torch.dtype | None = None,
) -> torch.Tensor | None:
    """Validate ``u`` of shape (B, L, d_model) and an optional (B, L) mask.

    With ``dtype`` (the layer's parameter dtype), ``u`` must have that dtype,
    except under autocast, which picks the compute dtype itself. Returns the
    mask as a boolean tensor (or None). Raises ValueError naming the argument
    and what was expected. The values (a finite ``u``, a mask of 0/1) are
    checked as :func:`value_checks_enabled` says.
    """
    if not isinstance(u, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (batch, seqlen, {d_model}), got {type(u).__name__}")
    if u.dim() != 3:
        raise ValueError(f"{name} must have shape (batch, seqlen, {d_model}), got a {u.dim()}-D tensor of shape {tuple(u.shape)}")
    if u.shape[-1] != d_model:
        raise ValueError(f"{name} must have shape (batch, seqlen, {d_model}): last dimension is {u.shape[-1]}, expected d_model={d_model}")
    if u.shape[1] == 0:
        raise ValueError(f"{name} must have at least one position, got shape {tuple(u.shape)}")
    if not u.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {u.dtype}")
    if dtype is not None and u.dtype != dtype and not torch.is_autocast_enabled(u.device.type):
        raise ValueError(f"{name} has dtype {u.dtype} but the layer's parameters are {dtype}: convert the input "
                         f"(u.to({dtype})) or the layer (layer.to({u.dtype})), or run under torch.autocast")
    if check_finite and value_checks_enabled(u) and not bool(torch.isfinite(u).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if attention_mask is None:
        return None
    return check_mask(attention_mask, tuple(u.shape[:2]), u.device)


def check_mask(attention_mask, shape: tuple, device=None) -> torch.Tensor:
    """Validate a (batch, seqlen) mask of 0/1 (any dtype) or bool; returns it as a bool tensor on ``device``.
    The 0/1 values are checked as :func:`value_checks_enabled` says."""
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor of shape {tuple(shape)}, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask must have shape (batch, seqlen) = {tuple(shape)}, got {tuple(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool and value_checks_enabled(attention_mask):
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError(f"attention_mask of dtype {attention_mask.dtype} must contain only 0 and 1 (or be a bool tensor)")
    return attention_mask.to(device=device, dtype=torch.bool)
