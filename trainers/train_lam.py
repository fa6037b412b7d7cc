"""Stage 2: the latent action model on raw pixels."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from genie_env.models import LatentActionModel
from genie_env.metrics import psnr
from trainers.loop import Task, base_parser, run_cli, stage_from_args, train
from trainers.metrics import side_by_side


def make_task(cfg) -> Task:
    torch.manual_seed(cfg.train.seed)
    model = LatentActionModel(cfg.model)

    def validate(m, batch):
        out = m(batch["frames"])
        return {"psnr": psnr(out["recon"], batch["frames"][:, 1:]), "recon_loss": out["recon_loss"],
                "perplexity": out["perplexity"], "usage": out["usage"]}

    def visualize(m, batch):
        video = batch["frames"][:1]
        return side_by_side(video[0, 1:], m(video)["recon"][0])

    return Task(cfg, model, loss=lambda m, batch: m(batch["frames"]), validate=validate, visualize=visualize)


def main(args) -> Path:
    cfg = stage_from_args(args, "lam")
    return train(make_task(cfg), args.data_dir, args.device, args.out_dir, args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main, base_parser("lam")))
