"""genie-env: Genie (Bruce et al., 2024) as a Gymnasium-compatible learned environment.

The pipeline: H5 video (``genie_env.data``) -> video tokenizer -> latent action model ->
dynamics model (``genie_env.models``), configured by ``genie_env.config`` and saved by
``genie_env.checkpoint``.
"""
from genie_env.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from genie_env.config import (ConfigError, DataConfig, DynamicsConfig, LAMConfig, StageConfig,
                              TokenizerConfig, TrainConfig, load_config)
from genie_env.env import GenieEnv
from genie_env.models import DynamicsModel, LatentActionModel, VideoTokenizer, build_model

__version__ = "0.1.0"

# Gymnasium 1.x has no plugin entry points: importing the package registers the env.
import gymnasium as _gym  # noqa: E402

if "Genie-v0" not in _gym.registry:
    _gym.register(id="Genie-v0", entry_point="genie_env.env:GenieEnv",
                  vector_entry_point="genie_env.vector_env:GenieVectorEnv",
                  max_episode_steps=1000)  # CoinRun's own time limit

__all__ = [
    "CheckpointError", "ConfigError", "DataConfig", "DynamicsConfig", "DynamicsModel", "LAMConfig",
    "LatentActionModel", "StageConfig", "TokenizerConfig", "TrainConfig", "VideoTokenizer",
    "GenieEnv", "build_model", "load_checkpoint", "load_config", "load_model", "save_checkpoint",
]
