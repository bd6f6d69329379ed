"""hydra-ssm: bidirectional, sub-quadratic sequence mixing in plain PyTorch.

The core needs torch and einops only. When HuggingFace transformers is
importable, ``import hydra_ssm`` also imports :mod:`hydra_ssm.models`, which
registers the model types "hydra" and "hydra_vision" with the transformers Auto
classes, so ``AutoModel*.from_pretrained`` and ``pipeline`` load saved Hydra
models after this import alone.

Checks that read tensor values (NaN in the input, a mask of 0/1, dt >= 0, indices
in range) synchronise a GPU with the host, so by default they run on CPU tensors
only: ``set_validation(True)`` (or ``with validation(True):``, or the environment
variable ``HYDRA_SSM_VALIDATE=1``) runs them on every device, ``set_validation(False)``
nowhere. Checks of shapes, dtypes and devices always run.
"""

from . import ops
from ._checks import get_validation, set_validation, validation
from .mixers import Hydra, MatrixMixer, MultiHeadAttention, SequenceMixer, available_mixers, build_mixer, register_mixer

__version__ = "0.1.0"

try:
    import transformers  # noqa: F401  (optional: the hf extra)
except ImportError:
    pass
else:
    try:
        from . import models  # noqa: F401  (registers the Auto classes)
    except ImportError as err:  # e.g. a transformers older than the models need: the core still works
        import warnings

        warnings.warn(f"hydra_ssm.models cannot be imported ({err}), so the Hydra models are not registered with "
                      "transformers; the layers and operators work. Install the tested versions: "
                      "pip install 'hydra-ssm[hf]'", stacklevel=2)

__all__ = ["get_validation", "set_validation", "validation", "Hydra", "MatrixMixer", "MultiHeadAttention", "SequenceMixer", "available_mixers", "build_mixer", "register_mixer", "ops"]
