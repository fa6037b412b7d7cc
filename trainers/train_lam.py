"""Stage 2: the latent action model on raw pixels."""
from __future__ import annotations

import sys
from pathlib import Path

from genie_env.models import LatentActionModel
from trainers.loop import Task, TrainingError, base_parser, run_cli, stage_from_args, train
from trainers.pixel_task import pixel_task


def make_task(cfg) -> Task:
    h = cfg.model.min_history
    if cfg.data.clip_len < h + 2:
        raise TrainingError(f"data.clip_len {cfg.data.clip_len} leaves no transition to train: a LAM with "
                            f"min_history {h} scores only transitions after {h} past frames; set "
                            f"data.clip_len to at least {h + 2}")
    # The LAM predicts frames 2..T from frames 1..T-1 and the actions between them.
    return pixel_task(cfg, LatentActionModel, target=lambda frames: frames[:, 1:], unscored=h)


def main(args) -> Path:
    cfg = stage_from_args(args, "lam")
    return train(make_task(cfg), args.data_dir, args.device, args.out_dir, args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main, base_parser("lam")))
