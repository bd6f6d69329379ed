"""hydra-ssm: bidirectional, sub-quadratic sequence mixing in plain PyTorch."""

from . import ops
from .mixers import Hydra, MatrixMixer, MultiHeadAttention, SequenceMixer, available_mixers, build_mixer, register_mixer

__version__ = "0.1.0"

__all__ = ["Hydra", "MatrixMixer", "MultiHeadAttention", "SequenceMixer", "available_mixers", "build_mixer", "register_mixer", "ops"]
