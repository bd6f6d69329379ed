"""Sequence mixers (``nn.Module``s), found by name through the registry."""

from .registry import SequenceMixer, available_mixers, build_mixer, get_mixer_class, register_mixer
from .hydra import Hydra
from .attention import MultiHeadAttention
from .matrix_mixer import MatrixMixer, matrix_mixer_types

__all__ = [
    "SequenceMixer",
    "register_mixer",
    "build_mixer",
    "get_mixer_class",
    "available_mixers",
    "Hydra",
    "MultiHeadAttention",
    "MatrixMixer",
    "matrix_mixer_types",
]
