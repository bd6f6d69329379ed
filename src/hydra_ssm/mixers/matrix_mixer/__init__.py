"""The matrix-mixer family: one layer (:class:`MatrixMixer`, in ``base.py``), many structured matrix classes.

One file per class; importing this package registers them all::

    base.py           MatrixMixer: in_proj / conv / norm / out_proj, checks, padding, the factory
    padding.py        rotating each padded row so that its valid run starts at position 0
    qk.py, ssm.py     shared bases of the q/k classes and of the state space classes
    dft_holder.py     the ``dft_matrix`` state_dict entry of the DFT Vandermonde form
    dense.py, toeplitz.py, vandermonde.py, cauchy.py, low_rank.py, attention.py,
    quasiseparable.py, semiseparable.py
    recurrent.py      shared base of the bidirectional recurrent classes:
    bi_gla.py, bi_deltanet.py, bi_complex.py

``MatrixMixer("toeplitz", ...)`` builds the class registered as "toeplitz",
with the reference Hydra repository's constructor and parameter names.
"""

from .attention import AttentionMixer
from .base import MatrixMixer, matrix_mixer_types
from .bi_complex import BiComplexMixer
from .bi_deltanet import BiDeltaNetMixer
from .bi_gla import BiGLAMixer
from .cauchy import CauchyMixer
from .dense import DenseMixer
from .low_rank import LowRankMixer
from .quasiseparable import QuasiseparableMixer
from .semiseparable import SemiseparableMixer
from .toeplitz import ToeplitzMixer
from .vandermonde import VandermondeMixer

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
    "BiGLAMixer",
    "BiDeltaNetMixer",
    "BiComplexMixer",
]
