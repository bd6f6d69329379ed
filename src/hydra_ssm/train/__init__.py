"""The main job: data, tasks, the training loop and comparisons (``hydra-ssm train``; docs/training.md)."""

from .config import TrainConfig, UsageError, build_config
from .runner import run

__all__ = ["TrainConfig", "UsageError", "build_config", "run"]
