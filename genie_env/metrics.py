"""World-model quality metrics: PSNR and rollouts against ground truth."""
from __future__ import annotations

import torch


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean PSNR in dB over the leading (batch) axis of images in [0, 1]."""
    mse = (pred.float() - target.float()).square().flatten(1).mean(dim=1)
    return (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).mean()


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each frame t of videos (B, T, C, H, W), averaged over B -> (T,)."""
    mse = (pred.float() - target.float()).square().flatten(2).mean(dim=2)
    return (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).mean(dim=0)


@torch.no_grad()
def rollout(tokenizer, dynamics, video: torch.Tensor, actions: torch.Tensor, steps: int | None = None,
            temperature: float | None = None, generators=None) -> torch.Tensor:
    """Generate video (B, T, C, H, W) from its first frame and ``actions`` (B, T-1), decoded to
    float32 pixels, at the tokenizer's and dynamics model's own precision."""
    tokens = tokenizer.encode(video[:, :1])
    gen = dynamics.generate(tokens, actions, steps=steps, temperature=temperature, generators=generators)
    return tokenizer.decode(gen)
