"""Functional operators: device-agnostic, differentiable, layout (B, L, H, P).

Every fast path has an obviously-correct reference beside it:

==========================  =====================================  ==========================
operator                    fast path                              references
==========================  =====================================  ==========================
causal SSD (Mamba-2)        :func:`semiseparable_chunked`          :func:`semiseparable_ref`,
                                                                   :func:`semiseparable_loop`,
                                                                   :func:`semiseparable_matrix`
Hydra (quasiseparable)      :func:`quasiseparable_chunked` (fused) :func:`quasiseparable_ref`,
                            :func:`quasiseparable_two_pass`        :func:`quasiseparable_matrix`
==========================  =====================================  ==========================
"""

from .reference import (
    quasiseparable_matrix,
    quasiseparable_ref,
    semiseparable_loop,
    semiseparable_matrix,
    semiseparable_ref,
)
from .semiseparable import semiseparable_chunked
from .quasiseparable import quasiseparable_chunked, quasiseparable_two_pass

__all__ = [
    "semiseparable_matrix",
    "semiseparable_ref",
    "semiseparable_loop",
    "semiseparable_chunked",
    "quasiseparable_matrix",
    "quasiseparable_ref",
    "quasiseparable_chunked",
    "quasiseparable_two_pass",
]
