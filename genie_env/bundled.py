"""The CoinRun world model bundled in the package, and how a world is assembled from checkpoints.

``genie_env/assets/coinrun/`` holds three weights-only checkpoints, prompt frames from held-out
episodes and ``action_map.json`` (which latent action stands for each arrow key); any path left
None below means these files.
"""
from __future__ import annotations

import json
from pathlib import Path

from genie_env.checkpoint import load_model
from genie_env.device import resolve_device
from genie_env.prompts import load_prompts
from genie_env.world import World

ASSETS = Path(__file__).resolve().parent / "assets" / "coinrun"


def bundled_paths() -> dict[str, Path]:
    """The checkpoints and prompt frames of the bundled CoinRun world model."""
    return {"tokenizer": ASSETS / "tokenizer.pt", "lam": ASSETS / "lam.pt",
            "dynamics": ASSETS / "dynamics.pt", "prompts": ASSETS / "prompts",
            "action_map": ASSETS / "action_map.json"}


def load_world_models(tokenizer_path=None, dynamics_path=None, device="cpu"):
    """(tokenizer, dynamics) from checkpoints, the bundled model for any path left None."""
    b = bundled_paths()
    tok = load_model(tokenizer_path or b["tokenizer"], kind="tokenizer", device=device)
    dyn = load_model(dynamics_path or b["dynamics"], kind="dynamics", device=device)
    return tok, dyn


def make_world(tokenizer_path, dynamics_path, prompt, device, batch_size: int,
               maskgit_steps: int | None, temperature: float | None, dtype="float32", compile: bool | str = False,
               action_guidance: float | None = None):
    """(device, World, prompt frames) for an env: bundled model and prompts where left None."""
    dev = resolve_device(device)
    tok, dyn = load_world_models(tokenizer_path, dynamics_path, dev)
    world = World(tok, dyn, batch_size, dev, maskgit_steps, temperature, dtype, compile, action_guidance)
    prompts = load_prompts(prompt if prompt is not None else bundled_paths()["prompts"], world.image_size)
    return dev, world, prompts


def load_action_map(dynamics_path=None) -> dict | None:
    """The arrow-key map (direction -> latent action, ``action_map.json``) beside a dynamics
    checkpoint, or the bundled one when ``dynamics_path`` is None; None when there is none."""
    path = (Path(dynamics_path).parent if dynamics_path else ASSETS) / "action_map.json"
    return json.loads(path.read_text()) if path.exists() else None
