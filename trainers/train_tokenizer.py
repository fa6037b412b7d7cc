"""Stage 1: the video tokenizer (ST-ViViT VQ-VAE) on raw frames."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from genie_env.models import VideoTokenizer
from genie_env.metrics import psnr
from trainers.loop import Task, base_parser, run_cli, stage_from_args, train
from trainers.metrics import side_by_side


def make_task(cfg) -> Task:
    torch.manual_seed(cfg.train.seed)
    model = VideoTokenizer(cfg.model)

    def validate(m, batch):
        out = m(batch["frames"])
        return {"psnr": psnr(out["recon"], batch["frames"]), "recon_loss": out["recon_loss"],
                "perplexity": out["perplexity"], "usage": out["usage"]}

    def visualize(m, batch):
        return side_by_side(batch["frames"][0], m(batch["frames"][:1])["recon"][0])

    return Task(cfg, model, loss=lambda m, batch: m(batch["frames"]), validate=validate, visualize=visualize)


def main(args) -> Path:
    cfg = stage_from_args(args, "tokenizer")
    return train(make_task(cfg), args.data_dir, args.device, args.out_dir, args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main, base_parser("tokenizer")))
