"""One checkpoint format for the three models: config + weights + training state.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)``: no arbitrary pickle runs. Keys::

    format: "genie-env/1"    kind: tokenizer | lam | dynamics
    config: the StageConfig as a plain dict (model, data, train)
    model: state_dict        step: int
    optimizer, scheduler: state_dicts (optional)
    rng: torch / cuda / numpy / python RNG states as tensors and ints (optional)
    extra: any plain dict (data position, metrics, ...)

Writes go to a temporary file in the same directory, are fsynced, then renamed over the target,
so a crash mid-write never leaves a truncated checkpoint.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch
from torch import nn

from genie_env.config import ConfigError, StageConfig, config_to_dict, stage_from_dict
from genie_env.models import build_model

FORMAT = "genie-env/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, of the wrong kind or does not fit the model."""


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop uses, as tensors and ints (``weights_only``-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file for writing that appears at ``path`` only once it is whole: it is written to
    a temp file in the same directory, fsynced, then renamed over ``path``. On an error the temp
    file is removed and ``path`` keeps what it held."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide checkpoints from a shared group
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through :func:`atomic_open`."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` over ``dst`` through :func:`atomic_open`."""
    with open(src, "rb") as r, atomic_open(dst) as w:
        shutil.copyfileobj(r, w)


def save_checkpoint(path: str | Path, model: nn.Module, config: StageConfig, step: int = 0,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    include_rng: bool = True, extra: dict | None = None) -> Path:
    """Write a checkpoint of ``model`` (unwrapped from DDP/compile) atomically; returns the path."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    ckpt = {"format": FORMAT, "kind": config.kind, "config": config.to_dict(),
            "model": model.state_dict(), "step": int(step)}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    if include_rng:
        ckpt["rng"] = rng_state()
    if extra:
        ckpt["extra"] = extra
    atomic_torch_save(ckpt, path)
    return Path(path)


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: Any = "cpu") -> dict:
    """Read and check a checkpoint dict; ``kind`` (if given) must match the file's."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found. Train one with the trainers "
                              f"(python -m trainers.train_<model>) or pass the right path.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable genie-env checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}). The file may be truncated "
                              f"or of another program; re-save it with genie-env.") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a genie-env checkpoint (no format '{FORMAT}' marker)")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {ckpt.get('kind')} model, but a {kind} checkpoint "
                              f"is needed here; check which path went to which argument.")
    return ckpt


def config_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> StageConfig:
    try:
        return stage_from_dict(ckpt["config"], where=f"{path} (stored config)")
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: its stored config does not fit this genie-env version: {e}") from e


def load_model(path: str | Path, kind: str | None = None, device: Any = "cpu") -> nn.Module:
    """Rebuild a model from its checkpoint alone (config + weights), in eval mode on ``device``."""
    return load_model_and_config(path, kind, device)[0]


def load_model_and_config(path: str | Path, kind: str | None = None,
                          device: Any = "cpu") -> tuple[nn.Module, StageConfig]:
    """:func:`load_model`, and the stage config (model, data, training) the checkpoint carries."""
    ckpt = load_checkpoint(path, kind)
    cfg = config_from_checkpoint(ckpt, path)
    model = build_model(cfg.kind, cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit a {cfg.kind} built from the stored config: "
                              f"{str(e).splitlines()[0]}") from e
    return model.to(device).eval(), cfg


__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_model", "load_model_and_config",
           "atomic_open", "atomic_copy", "atomic_torch_save",
           "rng_state", "set_rng_state", "config_from_checkpoint", "config_to_dict"]
