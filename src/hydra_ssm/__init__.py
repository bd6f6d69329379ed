"""hydra-ssm: bidirectional, sub-quadratic sequence mixing in plain PyTorch.

The core needs torch and einops only. When HuggingFace transformers is
importable, ``import hydra_ssm`` also imports :mod:`hydra_ssm.models`, which
registers the model types "hydra" and "hydra_vision" with the transformers Auto
classes, so ``AutoModel*.from_pretrained`` and ``pipeline`` load saved Hydra
models after this import alone.
"""

from . import ops
from .mixers import Hydra, MatrixMixer, MultiHeadAttention, SequenceMixer, available_mixers, build_mixer, register_mixer

__version__ = "0.1.0"

try:
    import transformers  # noqa: F401  (optional: the hf extra)
except ImportError:
    pass
else:
    from . import models  # noqa: F401  (registers the Auto classes)

__all__ = ["Hydra", "MatrixMixer", "MultiHeadAttention", "SequenceMixer", "available_mixers", "build_mixer", "register_mixer", "ops"]
