"""Hydra encoders as HuggingFace transformers models (needs the ``hf`` extra).

Importing this package registers the "hydra" model type with the transformers
Auto classes (AutoConfig, AutoModel, AutoModelForMaskedLM,
AutoModelForSequenceClassification, AutoModelForTokenClassification,
AutoModelForImageClassification). ``import hydra_ssm`` alone does not import
transformers.
"""

try:
    import transformers  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hydra_ssm.models needs HuggingFace transformers: pip install 'hydra-ssm[hf]'") from err

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_hydra import HydraConfig
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
    for auto, cls in (
        (AutoModel, HydraModel),
        (AutoModelForMaskedLM, HydraForMaskedLM),
        (AutoModelForSequenceClassification, HydraForSequenceClassification),
        (AutoModelForTokenClassification, HydraForTokenClassification),
        (AutoModelForImageClassification, HydraForImageClassification),
    ):
        auto.register(HydraConfig, cls, exist_ok=True)


_register()

__all__ = [
    "HydraConfig",
    "HydraPreTrainedModel",
    "HydraModel",
    "HydraForMaskedLM",
    "HydraForSequenceClassification",
    "HydraForTokenClassification",
    "HydraVisionModel",
    "HydraForImageClassification",
]
