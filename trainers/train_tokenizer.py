"""Stage 1: the video tokenizer (ST-ViViT VQ-VAE) on raw frames."""
from __future__ import annotations

import sys
from pathlib import Path

from genie_env.models import VideoTokenizer
from trainers.loop import Task, base_parser, run_cli, stage_from_args, train
from trainers.pixel_task import pixel_task


def make_task(cfg) -> Task:
    return pixel_task(cfg, VideoTokenizer, target=lambda frames: frames)


def main(args) -> Path:
    cfg = stage_from_args(args, "tokenizer")
    return train(make_task(cfg), args.data_dir, args.device, args.out_dir, args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main, base_parser("tokenizer")))
