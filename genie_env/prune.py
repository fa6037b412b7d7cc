"""Pruning a world's token codebook to the codes its training frames use.

A k-means codebook fitted on a thousand frames keeps codes for patches that hardly recur: on
CoinRun, the least-used quarter of 1024 pixel codes holds under 1% of the training frames' patches,
so those codes are dead weight in the tokenizer and 256 rows of every dynamics logit. Pruning keeps
the ``keep`` codes that the training frames use most; a patch whose code was dropped takes the
nearest kept one (the tokenizer's own nearest-code search does that), and the dynamics model keeps
its embedding and output rows of the kept codes, so the world is the same model with fewer choices.
``genie-env export --prune_codes K`` applies it to an exported world, ``genie-env prune`` to a
tokenizer alone.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from genie_env.data.h5 import ClipDataset
from genie_env.models.dynamics import DynamicsModel
from genie_env.models.tokenizer import VideoTokenizer
from genie_env.world import check_pair


@torch.no_grad()
def code_counts(tokenizer: VideoTokenizer, data_dir, data_cfg, frames: int = 4096, batch: int = 64) -> torch.Tensor:
    """How often each code is the token of a patch, over up to ``frames`` frames spread evenly over
    the episodes that ``data_cfg`` (the tokenizer's stored DataConfig) trained on: (num_codes,) int64."""
    ds = ClipDataset(data_dir, clip_len=1, image_size=tokenizer.cfg.image_size, split="train",
                     val_fraction=data_cfg.val_fraction, seed=data_cfg.seed)
    if len(ds) == 0:
        raise ValueError(f"{data_dir}: no training frames to count the codes on")
    idx = np.unique(np.linspace(0, len(ds) - 1, min(frames, len(ds))).astype(int))
    counts = torch.zeros(tokenizer.cfg.num_codes, dtype=torch.long)
    for start in range(0, len(idx), batch):
        video = torch.stack([ds[int(i)]["frames"] for i in idx[start:start + batch]])
        counts += torch.bincount(tokenizer.encode(video).flatten().cpu(), minlength=tokenizer.cfg.num_codes)
    return counts


def check_keep(keep: int, num_codes: int) -> None:
    """Refuse keeping fewer than one code or more than the codebook holds, naming the flag."""
    if not 1 <= keep <= num_codes:
        raise ValueError(f"--prune_codes must be between 1 and the codebook's {num_codes} codes, got {keep}")


def most_used(counts: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` most counted codes, in their old order (ties go to the lower index)."""
    check_keep(keep, len(counts))
    order = sorted(range(len(counts)), key=lambda c: (-int(counts[c]), c))
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)


def prune_tokenizer(tokenizer: VideoTokenizer, keep: torch.Tensor) -> VideoTokenizer:
    """A copy of ``tokenizer`` whose codebook holds only the codes ``keep`` (old indices, ascending),
    renumbered 0..len(keep)-1 in that order."""
    cfg = tokenizer.cfg
    if cfg.quantizer == "fsq":
        raise ValueError("an FSQ tokenizer's codes are a fixed grid of levels and cannot be pruned one by one; "
                         "prune a vq or kmeans tokenizer, or choose fewer fsq_levels")
    state = {k: v.clone() for k, v in tokenizer.state_dict().items()}
    for name in ("vq.centroids", "vq.codebook", "vq.steps_unused"):
        if name in state:
            state[name] = state[name][keep]
    new = VideoTokenizer(dataclasses.replace(cfg, num_codes=len(keep)))
    new.load_state_dict(state)
    return new.to(next(tokenizer.parameters()).device).eval()


def prune_dynamics(dynamics: DynamicsModel, keep: torch.Tensor) -> DynamicsModel:
    """A copy of ``dynamics`` predicting only the codes ``keep`` (old indices, ascending), renumbered as
    :func:`prune_tokenizer` does; the mask token stays last."""
    cfg = dynamics.cfg
    with_mask = torch.cat([keep, torch.tensor([cfg.vocab_size])])
    state = {k: v.clone() for k, v in dynamics.state_dict().items()}
    state["token_emb.weight"] = state["token_emb.weight"][with_mask]
    state["head.weight"], state["head.bias"] = state["head.weight"][keep], state["head.bias"][keep]
    if "code_pixels" in state:
        state["code_pixels"] = state["code_pixels"][with_mask]
    new = DynamicsModel(dataclasses.replace(cfg, vocab_size=len(keep)))
    new.load_state_dict(state)
    return new.to(next(dynamics.parameters()).device).eval()


def prune_world(tokenizer: VideoTokenizer, dynamics: DynamicsModel, counts: torch.Tensor,
                keep: int) -> tuple[VideoTokenizer, DynamicsModel, dict]:
    """Tokenizer and dynamics model pruned to the ``keep`` most counted codes, and a summary: the
    codes kept and the share of the counted patches whose code was dropped."""
    check_pair(tokenizer, dynamics, "pruning: ")
    kept, summary = choose_codes(counts, keep)
    return prune_tokenizer(tokenizer, kept), prune_dynamics(dynamics, kept), summary


def choose_codes(counts: torch.Tensor, keep: int) -> tuple[torch.Tensor, dict]:
    """The ``keep`` most counted codes (:func:`most_used`) and a summary: the codes kept and the
    share of the counted patches whose code was dropped."""
    kept = most_used(counts, keep)
    summary = {"codes before": int(len(counts)), "codes kept": int(keep),
               "counted patches whose code was dropped (fraction)":
                   float(1 - counts[kept].sum() / counts.sum().clamp(min=1))}
    return kept, summary
