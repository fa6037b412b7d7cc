"""What pruning a tokenizer's codebook (``genie-env export --prune_codes K``) costs and buys.

Codes are counted on ``--frames`` training frames of ``--data_dir`` (the episodes the tokenizer's
stored data config trained on, as export counts them); for each K the tokenizer keeps the K most
counted codes and is scored on ``--frames`` frames of the held-out ``--heldout_dir``: codebook
perplexity (and its share of K, issue 9's goal is 25%), the share of held-out patches whose code
was dropped, and the tokenizer's PSNR (its decoder included, each frame a one-frame clip).

    python benchmarks/prune_codes.py --tokenizer runs/tok/tokenizer/latest.pt --data_dir data/coinrun_v2 \\
        --heldout_dir data/coinrun_heldout --keep 1024 960 900 850 800 768 700 640 512
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from genie_env.checkpoint import load_model_and_config
from genie_env.data.h5 import ClipDataset
from genie_env.metrics import psnr_each
from genie_env.nn.vq import code_stats
from genie_env.prune import code_counts, most_used, prune_tokenizer


def heldout_frames(data_dir, image_size, frames: int) -> torch.Tensor:
    """``frames`` frames (N, 1, 3, H, W) spread evenly over every episode of ``data_dir``."""
    ds = ClipDataset(data_dir, clip_len=1, image_size=image_size)
    idx = np.unique(np.linspace(0, len(ds) - 1, min(frames, len(ds))).astype(int))
    return torch.stack([ds[int(i)]["frames"] for i in idx])


@torch.no_grad()
def score(tokenizer, video: torch.Tensor, batch: int = 64) -> dict:
    tokens = torch.cat([tokenizer.encode(v) for v in video.split(batch)])
    recon = torch.cat([tokenizer.decode(t) for t in tokens.split(batch)])
    stats = code_stats(tokens, tokenizer.cfg.num_codes)
    return {"tokens": tokens, "perplexity": float(stats["perplexity"]),
            "psnr": float(psnr_each(recon.flatten(0, 1), video.flatten(0, 1)).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data_dir", required=True, help="the episodes the tokenizer trained on (codes counted here)")
    p.add_argument("--heldout_dir", required=True, help="episodes no training run used (scored here)")
    p.add_argument("--keep", type=int, nargs="+", required=True, help="codebook sizes K to try")
    p.add_argument("--frames", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer, stage = load_model_and_config(args.tokenizer, "tokenizer")
    counts = code_counts(tokenizer, args.data_dir, stage.data, frames=args.frames)
    video = heldout_frames(args.heldout_dir, tokenizer.cfg.image_size, args.frames)
    full = score(tokenizer, video)
    print(f"{args.tokenizer}: {tokenizer.cfg.num_codes} codes, counted on {int(counts.sum())} training patches, "
          f"scored on {len(video)} held-out frames")
    print("| codes kept | training patches whose code was dropped | held-out patches whose code was dropped "
          "| held-out perplexity | share of the codes | tokenizer PSNR (dB) |")
    print("|---|---|---|---|---|---|")
    for k in args.keep:
        kept = most_used(counts, k)
        pruned = score(prune_tokenizer(tokenizer, kept), video)
        dropped_train = 1 - float(counts[kept].sum() / counts.sum())
        dropped_held = float((~torch.isin(full["tokens"], kept)).float().mean())
        print(f"| {k} | {100 * dropped_train:.2f}% | {100 * dropped_held:.2f}% | {pruned['perplexity']:.1f} "
              f"| {100 * pruned['perplexity'] / k:.1f}% | {pruned['psnr']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
