"""genie-env: Genie (Bruce et al., 2024) as a Gymnasium-compatible learned environment.

The pipeline: H5 video (``genie_env.data``) -> video tokenizer -> latent action model ->
dynamics model (``genie_env.models``), configured by ``genie_env.config`` and saved by
``genie_env.checkpoint``.
"""
from genie_env.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from genie_env.config import (ConfigError, DataConfig, DynamicsConfig, LAMConfig, StageConfig,
                              TokenizerConfig, TrainConfig, load_config)
from genie_env.models import DynamicsModel, LatentActionModel, VideoTokenizer, build_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "DataConfig", "DynamicsConfig", "DynamicsModel", "LAMConfig",
    "LatentActionModel", "StageConfig", "TokenizerConfig", "TrainConfig", "VideoTokenizer",
    "build_model", "load_checkpoint", "load_config", "load_model", "save_checkpoint",
]
