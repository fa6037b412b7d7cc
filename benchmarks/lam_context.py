"""A/B of the LAM's context: actions read with a history of frames (``--context 8``, the paper's
setup) or from their own two frames only (``--context 2``), on the same data, architecture and
budget. Every ``--every`` steps prints next-frame PSNR, latent/true-action mutual information and
accuracy, and each code's share, on held-out clips of 8 frames (read pair by pair when the
context is 2). One thread, so two arms can run side by side on two cores.

    python benchmarks/lam_context.py --context 8 --data_dir data/coinrun_v2 --heldout data/coinrun_heldout
    python benchmarks/lam_context.py --context 2 --batch_size 48 --data_dir data/coinrun_v2 --heldout data/coinrun_heldout

The two arms see about the same number of frames a step (16 clips of 8 frames, 48 pairs).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from genie_env.config import LAMConfig
from genie_env.data.h5 import ClipDataset
from genie_env.evaluate import action_agreement
from genie_env.metrics import psnr
from genie_env.models import LatentActionModel
from genie_env.nn.vq import restore_reseeded_codes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=8, help="frames the LAM sees: its max_frames and clip length")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--heldout", required=True, help="H5 episodes of levels the training data does not hold")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    train = ClipDataset(args.data_dir, clip_len=args.context)
    held = ClipDataset(args.heldout, clip_len=8)
    g = torch.Generator().manual_seed(0)
    items = [held[i] for i in torch.randperm(len(held), generator=g)[:128].tolist()]
    video = torch.stack([it["frames"] for it in items])
    true = torch.stack([it["actions"][:-1] for it in items]).flatten().numpy()
    # The candidate LAM's architecture (configs/candidate/lam_config.yaml) at either context.
    lam = LatentActionModel(LAMConfig(patch_size=16, enc_layers=2, enc_dim=96, enc_heads=4, dec_layers=2,
                                      dec_dim=96, dec_heads=4, max_frames=args.context, dead_code_steps=50))
    opt = torch.optim.AdamW(lam.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    start = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(train), (args.batch_size,), generator=g).tolist()
        lam.train()
        loss = lam(torch.stack([train[i]["frames"] for i in idx]))["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lam.parameters(), 1.0)
        opt.step()
        sched.step()
        restore_reseeded_codes(lam, opt)
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                out = lam.eval()(video)
            latent = out["actions"].flatten().numpy()
            agree = action_agreement(latent, true)
            share = np.bincount(latent, minlength=lam.cfg.num_actions) / latent.size
            print(f"context {args.context} step {step}: next-frame PSNR "
                  f"{float(psnr(out['recon'].flatten(0, 1), video[:, 1:].flatten(0, 1))):.2f} dB, "
                  f"MI {agree['mutual information (bits)']:.3f} bits "
                  f"(bias-corrected {agree['mutual information, bias-corrected (bits)']:.3f}), accuracy {agree['accuracy']:.3f} "
                  f"(chance {agree['chance accuracy']:.3f}), code shares {np.round(share, 2).tolist()}, "
                  f"{time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
