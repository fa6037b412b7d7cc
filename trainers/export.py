"""Package a trained world model: weights-only checkpoints and prompt frames from held-out episodes.

``genie-env export --run runs/bundled --data_dir data/coinrun_bundled --out genie_env/assets/coinrun``
is how the model bundled in the package was made. The checkpoints keep their config and step but
drop the optimizer and RNG state; they load with ``weights_only=True`` like every checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genie_env.checkpoint import load_checkpoint, load_model_and_config, save_checkpoint
from genie_env.data.collect import PROCGEN_COMBOS
from genie_env.data.h5 import ClipDataset
from genie_env.data.probes import load_key_probes
from genie_env.evaluate import SAMPLER_MINIMUM, add_sampler_arguments, check_sampler, override_sampler
from genie_env.prune import check_keep, code_counts, prune_world
from genie_env.prompts import load_prompts
from genie_env.video import to_uint8

log = logging.getLogger("genie_env.export")

DIRECTIONS = {"left": "LEFT", "right": "RIGHT", "up": "UP", "down": "DOWN"}


@torch.no_grad()
def procgen_action_map(lam, data_dir, clip_len: int, max_clips: int = 400) -> dict:
    """Which latent action stands for each direction, from the true Procgen actions of the data.

    A latent action's lift for a direction is how much more often its transitions hold that
    direction than the data as a whole; the map is the one-to-one assignment of directions (and
    "noop", the combinations without one) to latent actions with the largest total lift.
    Returns the map and the lifts behind it.
    """
    ds = ClipDataset(data_dir, clip_len=clip_len, image_size=lam.cfg.image_size, split="train")
    if not ds.has_actions:
        raise ValueError(f"{data_dir}: no true actions to map latent actions to")
    idx = np.linspace(0, len(ds) - 1, min(max_clips, len(ds))).astype(int)
    latent, true = [], []
    for start in range(0, len(idx), 32):
        batch = [ds[int(i)] for i in idx[start:start + 32]]
        latent.append(lam.infer_actions(torch.stack([b["frames"] for b in batch])).flatten())
        true.append(torch.stack([b["actions"][:-1] for b in batch]).flatten())
    latent, true = torch.cat(latent).numpy(), torch.cat(true).numpy()
    if true.max() >= len(PROCGEN_COMBOS):
        raise ValueError("the data's actions are not Procgen's 15 combinations")
    n = lam.cfg.num_actions
    has = {name: np.array([key in PROCGEN_COMBOS[a] for a in true]) for name, key in DIRECTIONS.items()}
    has["noop"] = ~np.any(np.stack(list(has.values())), axis=0)
    lifts = {}
    for name, mask in has.items():
        base = max(mask.mean(), 1e-9)
        lifts[name] = [float(mask[latent == c].mean() / base) if (latent == c).any() else 0.0 for c in range(n)]
    names = list(lifts)[:n]  # a LAM with fewer than 5 actions maps what it can
    best = max(itertools.permutations(range(n), len(names)),
               key=lambda codes: sum(lifts[k][c] for k, c in zip(names, codes)))
    chosen = dict(zip(names, map(int, best)))
    return {**chosen, "lift": {k: [round(x, 3) for x in v] for k, v in lifts.items()},
            "transitions": int(len(latent))}


def episode_starts(data_dir, image_size, data_cfg, num: int) -> list[torch.Tensor]:
    """Each held-out episode's first frame (3, H, W), up to ``num``: starts a player has not seen in
    training."""
    val = ClipDataset(data_dir, clip_len=1, image_size=image_size, split="val",
                      val_fraction=data_cfg.val_fraction, seed=data_cfg.seed)
    starts = {a for _, a, _ in val.episodes}
    return [val[i]["frames"][0] for i, (_, s) in enumerate(val.index) if s in starts][:num]


def probe_prompts(path, image_size, num: int) -> list[torch.Tensor]:
    """The prompts (3, H, W) of the key probes in which the real game scrolled right under "right"
    and left under "left", up to ``num``: states from which both arrow keys can move the scene."""
    probes = load_key_probes(path)
    right, left = (probes["scroll"][:, probes["keys"].index(k)] for k in ("right", "left"))
    both = np.flatnonzero((right > 0) & (left < 0))[:num]
    if len(both) == 0:
        raise ValueError(f"{path}: in none of its {len(right)} probes did both keys scroll the real game; "
                         f"record more with genie-env probes --probes N")
    return list(load_prompts(probes["prompts"][both], image_size, str(path)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a pipeline's --out_dir holding tokenizer/, lam/, dynamics/")
    p.add_argument("--data_dir", required=True, help="the H5 episodes it was trained on")
    p.add_argument("--out", required=True, help="where to write tokenizer.pt, lam.pt, dynamics.pt, prompts/")
    p.add_argument("--num_prompts", type=int, default=8)
    p.add_argument("--key_probes", default=None,
                   help="key probes (genie-env probes): take the prompts from the probes in which both the "
                        "real game's right and left keys scrolled the scene their way, instead of held-out "
                        "episodes' first frames (where CoinRun's left key cannot move)")
    p.add_argument("--prune_codes", type=int, default=None, metavar="K",
                   help="keep only the K token codes that the training episodes of --data_dir use most, in the "
                        "tokenizer and the dynamics model (genie_env.prune): drops codes that hardly recur")
    add_sampler_arguments(p, "written into the exported dynamics checkpoint, so that gym.make and every command "
                             "sample the world so")


def load_for_export(src: str | Path, kind: str | None = None):
    """``src``'s model (eval mode, CPU), its stage config and its training step."""
    model, stage = load_model_and_config(src, kind)
    return model, stage, int(load_checkpoint(src, kind)["step"])


def save_for_export(dst: str | Path, model, stage, step: int, extra: dict | None = None) -> int:
    """Write ``model`` with ``stage`` (its model config replaced by the model's own, which pruning or
    sampler flags may have changed) and ``step``, without optimizer or RNG state; returns the size."""
    save_checkpoint(dst, model, dataclasses.replace(stage, model=model.cfg), step=step, include_rng=False, extra=extra)
    return Path(dst).stat().st_size


def weights_only(src: str | Path, dst: str | Path, kind: str | None = None):
    """Write ``src``'s model, config and step to ``dst`` without optimizer or RNG state; returns
    (the file's size in bytes, the stage config)."""
    model, stage, step = load_for_export(src, kind)
    return save_for_export(dst, model, stage, step), stage


def run(args: argparse.Namespace) -> int:
    run_dir, out = Path(args.run), Path(args.out)
    sampler = {name: getattr(args, name) for name in SAMPLER_MINIMUM}
    check_sampler(sampler)
    # Everything is loaded and changed in memory first, so a refused flag overwrites nothing in --out.
    loaded = {kind: load_for_export(run_dir / kind / "latest.pt", kind) for kind in ("tokenizer", "lam", "dynamics")}
    models = {kind: model for kind, (model, _, _) in loaded.items()}
    dyn_stage = loaded["dynamics"][1]
    extra = None
    if args.prune_codes is not None:
        tokenizer = models["tokenizer"]
        check_keep(args.prune_codes, tokenizer.cfg.num_codes)
        counts = code_counts(tokenizer, args.data_dir, loaded["tokenizer"][1].data)
        models["tokenizer"], models["dynamics"], summary = prune_world(tokenizer, models["dynamics"], counts,
                                                                        args.prune_codes)
        extra = {"pruned": summary}
        log.info("pruned the codebook: %s", json.dumps(summary))
    if any(v is not None for v in sampler.values()):
        override_sampler(models["dynamics"], sampler)
        log.info("dynamics sampler set: %s", json.dumps({k: v for k, v in sampler.items() if v is not None}))
    out.mkdir(parents=True, exist_ok=True)
    sizes = {kind: save_for_export(out / f"{kind}.pt", models[kind], stage, step, None if kind == "lam" else extra)
             for kind, (_, stage, step) in loaded.items()}
    image_size = models["tokenizer"].cfg.image_size
    prompts = (probe_prompts(args.key_probes, image_size, args.num_prompts) if args.key_probes
               else episode_starts(args.data_dir, image_size, dyn_stage.data, args.num_prompts))
    prompt_dir = out / "prompts"
    prompt_dir.mkdir(exist_ok=True)
    for old in prompt_dir.glob("*.png"):
        old.unlink()
    for k, frame in enumerate(prompts):
        Image.fromarray(to_uint8(frame.permute(1, 2, 0).numpy())).save(prompt_dir / f"prompt_{k:02d}.png")
    try:
        amap = procgen_action_map(models["lam"], args.data_dir, dyn_stage.data.clip_len)
        (out / "action_map.json").write_text(json.dumps(amap, indent=1))
    except ValueError as e:
        log.warning("no action map written: %s", e)
    results = run_dir / "results.json"
    if results.exists():
        (out / "results.json").write_text(results.read_text())
    log.info("exported %s (%.1f MB) and %d prompts to %s", json.dumps(sizes), sum(sizes.values()) / 2**20,
             len(prompts), out)
    return 0
