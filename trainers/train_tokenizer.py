"""Stage 1: the video tokenizer (ST-ViViT VQ-VAE) on raw frames.

With ``quantizer: kmeans`` the tokenizer's pixel codes are fitted first, by k-means on
``kmeans_frames`` training frames spread over the data, and stay fixed while the decoder trains;
a run started with ``train.init_from`` (``--init_from``) keeps that checkpoint's codes instead.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from genie_env.models import VideoTokenizer
from genie_env.models.tokenizer import patchify
from trainers.loop import (Task, TrainingError, base_parser, build_datasets, run_cli, spread_clips,
                           stage_from_args, train)
from trainers.pixel_task import pixel_task


def make_task(cfg) -> Task:
    return pixel_task(cfg, VideoTokenizer, target=lambda frames: frames)


def fit_pixel_codes(tokenizer: VideoTokenizer, dataset, frames: int, seed: int = 0) -> None:
    """Fit a ``quantizer: kmeans`` tokenizer's codes to the patches of ``frames`` frames from
    clips spread evenly over ``dataset``."""
    cfg = tokenizer.cfg
    clips = spread_clips(dataset, math.ceil(frames / dataset.clip_len))
    video = torch.cat(clips)[:frames]
    per_frame = tokenizer.grid[0] * tokenizer.grid[1]
    if len(video) * per_frame < cfg.num_codes:
        raise TrainingError(f"fitting {cfg.num_codes} pixel codes needs at least {cfg.num_codes} patches, but "
                            f"{len(video)} training frames give {len(video) * per_frame}: raise model.kmeans_frames, "
                            "collect more episodes, or lower num_codes")
    tokenizer.vq.fit(patchify(video.float(), cfg.patch_size).flatten(0, 1),
                     generator=torch.Generator().manual_seed(seed))


def main(args) -> Path:
    cfg = stage_from_args(args, "tokenizer")
    task = make_task(cfg)
    run_dir = Path(args.out_dir or cfg.train.out_dir) / task.kind
    # A resumed run loads its fitted codes from the checkpoint, a fine-tune from its init_from
    # weights: refitting would cost minutes and its codes would be overwritten.
    if cfg.model.quantizer == "kmeans" and not (run_dir / "latest.pt").exists() and not cfg.train.init_from:
        train_ds, _ = build_datasets(cfg, args.data_dir, cfg.model.image_size)
        fit_pixel_codes(task.model, train_ds, cfg.model.kmeans_frames, cfg.train.seed)
    return train(task, args.data_dir, args.device, args.out_dir, args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main, base_parser("tokenizer")))
