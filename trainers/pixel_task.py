"""The training task of the two pixel models: the tokenizer (stages 1) and the LAM (stage 2).

Both reconstruct frames and log the same things; they differ only in the model and in which
frames the reconstruction stands for: the tokenizer reconstructs its input, the LAM predicts
frames 2..T from frames 1..T-1 and the latent actions between them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from genie_env.config import StageConfig
from genie_env.metrics import psnr
from genie_env.video import side_by_side
from trainers.loop import Task


def pixel_task(cfg: StageConfig, build: Callable[[object], nn.Module],
               target: Callable[[torch.Tensor], torch.Tensor], unscored: int = 0) -> Task:
    """A :class:`Task` for ``build(cfg.model)``, whose ``recon`` output stands for ``target(frames)``;
    validation's PSNR leaves out the first ``unscored`` frames of both, as the loss does."""
    torch.manual_seed(cfg.train.seed)
    model = build(cfg.model)

    def validate(m, batch):
        out = m(batch["frames"])
        return {"psnr": psnr(out["recon"][:, unscored:], target(batch["frames"])[:, unscored:]),
                "recon_loss": out["recon_loss"],
                "perplexity": out["perplexity"], "usage": out["usage"]}

    def visualize(m, batch):
        video = batch["frames"][:1]
        return side_by_side(target(video)[0], m(video)["recon"][0])

    return Task(cfg, model, loss=lambda m, batch: m(batch["frames"]), validate=validate, visualize=visualize)
