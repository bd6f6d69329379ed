"""Hydra encoders as HuggingFace transformers models (needs the ``hf`` extra).

Importing this package (which ``import hydra_ssm`` does whenever transformers is
importable) registers the model types with the transformers Auto classes:
"hydra" (text: AutoConfig, AutoModel, AutoModelForMaskedLM,
AutoModelForSequenceClassification, AutoModelForTokenClassification) and
"hydra_vision" (images: AutoConfig, AutoModel, AutoModelForImageClassification,
AutoImageProcessor).
"""

try:
    import transformers  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hydra_ssm.models needs HuggingFace transformers: pip install 'hydra-ssm[hf]'") from err

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.utils import is_vision_available

from .configuration_hydra import HydraConfig, HydraVisionConfig
from .image_processing_hydra import HydraImageProcessor
from .modeling_hydra import (
    HydraForImageClassification,
    HydraForMaskedLM,
    HydraForSequenceClassification,
    HydraForTokenClassification,
    HydraModel,
    HydraPreTrainedModel,
    HydraVisionModel,
)


def _register() -> None:
    AutoConfig.register(HydraConfig.model_type, HydraConfig, exist_ok=True)
    AutoConfig.register(HydraVisionConfig.model_type, HydraVisionConfig, exist_ok=True)
    for auto, config_class, cls in (
        (AutoModel, HydraConfig, HydraModel),
        (AutoModelForMaskedLM, HydraConfig, HydraForMaskedLM),
        (AutoModelForSequenceClassification, HydraConfig, HydraForSequenceClassification),
        (AutoModelForTokenClassification, HydraConfig, HydraForTokenClassification),
        (AutoModel, HydraVisionConfig, HydraVisionModel),
        (AutoModelForImageClassification, HydraVisionConfig, HydraForImageClassification),
    ):
        auto.register(config_class, cls, exist_ok=True)
    if is_vision_available():  # without Pillow, transformers' AutoImageProcessor is a placeholder that refuses use
        AutoImageProcessor.register(HydraVisionConfig, image_processor_classes={"pil": HydraImageProcessor},
                                    exist_ok=True)


_register()

__all__ = [
    "HydraConfig",
    "HydraVisionConfig",
    "HydraImageProcessor",
    "HydraPreTrainedModel",
    "HydraModel",
    "HydraForMaskedLM",
    "HydraForSequenceClassification",
    "HydraForTokenClassification",
    "HydraVisionModel",
    "HydraForImageClassification",
]
