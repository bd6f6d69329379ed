"""Hydra's scan on Triton kernels (optional: ``pip install triton``; imported lazily).

``quasiseparable_chunked(..., backend="triton")`` runs it; ``backend="auto"`` picks it for
CUDA tensors when Triton can be imported. With the environment variable
``TRITON_INTERPRET=1`` set before the first call, Triton's interpreter runs the same
kernels on CPU tensors (slowly): that is how the tests check them without a GPU.

Layout: ``kernels.py`` (the scan's Triton kernels and the algorithm's notes), ``scan.py``
(its launchers, the custom ops ``hydra_ssm::scan_fwd`` / ``scan_bwd`` and their autograd);
the scan's neighbours in the Hydra layer, each a custom op with forward and backward
kernels: ``conv.py`` (the non-causal depthwise conv + SiLU, channels last) and
``norm.py`` (the gated RMSNorm); ``_launch.py`` what those two share.
"""

from __future__ import annotations

import importlib.util
import os

_FOUND = importlib.util.find_spec("triton") is not None  # looked up once, without importing triton


def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    return _FOUND


def interpreting() -> bool:
    """True when Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def hydra_scan(*args, **kwargs):
    """:func:`hydra_ssm.ops.triton.scan.hydra_scan`, importing Triton on first use."""
    from .scan import hydra_scan as run

    return run(*args, **kwargs)


def depthwise_conv_silu_triton(*args, **kwargs):
    """:func:`hydra_ssm.ops.triton.conv.depthwise_conv_silu_triton`, importing Triton on first use."""
    from .conv import depthwise_conv_silu_triton as run

    return run(*args, **kwargs)


def gated_rms_norm_triton(*args, **kwargs):
    """:func:`hydra_ssm.ops.triton.norm.gated_rms_norm_triton`, importing Triton on first use."""
    from .norm import gated_rms_norm_triton as run

    return run(*args, **kwargs)
