"""The three Genie models: video tokenizer, latent action model, dynamics model."""
from genie_env.models.dynamics import DynamicsModel
from genie_env.models.lam import LatentActionModel
from genie_env.models.tokenizer import VideoTokenizer

MODEL_CLASSES = {"tokenizer": VideoTokenizer, "lam": LatentActionModel, "dynamics": DynamicsModel}


def build_model(kind: str, cfg):
    """A fresh model of ``kind`` ('tokenizer', 'lam' or 'dynamics') from its config."""
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[kind](cfg)


__all__ = ["VideoTokenizer", "LatentActionModel", "DynamicsModel", "MODEL_CLASSES", "build_model"]
