"""What motion a frame pair shows, and how much of it a LAM sees: the yardstick for issue 9's
steering goals (LAM/true-action mutual information >= 0.5 bits, arrow keys that scroll).

For pairs (frame t, frame t + stride) of held-out episodes it prints, per stride:

- copy PSNR: the next frame predicted as the current one (pooled MSE, as an MSE loss sees it);
- shift PSNR: the current frame moved by the best global integer shift (on an interior crop,
  beside copy on the same crop): what a predictor that knew the camera motion would gain;
- the share of pairs whose scene moved left / not / right, and up / not / down;
- the mutual information between the true action at t and the sign of that motion (plug-in and
  Miller-Madow corrected, as `genie-env eval` reports the LAM's): how much of the true action
  the global motion alone carries, a reference for the LAM's figure (not a ceiling: the agent's
  sprite, facing and animation carry more);
- with ``--lam``: that LAM's next-frame PSNR (pooled), the information its codes carry about
  the true action, the motion, and the horizontal and vertical motion alone, and the share of pairs whose code
  stays the same when both frames are mirrored left-right (a LAM that tells left from right
  changes the code of a pair that scrolls; one that does not is blind to the direction); a LAM
  with ``min_history`` h reads each pair after h past frames at the same stride (so for it the
  pairs are drawn from clips that long);
- with ``--lam``, once: the information its codes carry about the true actions on the sample
  ``genie-env eval`` labels (``--eval_clips`` clips of ``--eval_clip_len`` frames drawn by the
  same seed from all episodes of the folder), so a LAM alone gets the figure issue 9's goal and
  README's table quote, without a world to roll out;
- with ``--tokenizers``: each tokenizer's reconstruction PSNR of the pairs (pooled, each pair
  tokenized as a two-frame clip) and, of the pairs that scroll sideways, the share whose
  reconstructions scroll by the same number of pixels: a scroll the tokenizer loses is one no
  dynamics model can show (``genie-env eval`` reports the same share on its clips).

    python benchmarks/motion.py --data_dir data/coinrun_heldout --lam assets_candidate/lam.pt
    python benchmarks/motion.py --data_dir data/coinrun_heldout --strides 1 --tokenizers runs/candidate/tokenizer/checkpoint_step_*.pt
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from genie_env.checkpoint import load_model
from genie_env.data.h5 import ClipDataset
from genie_env.evaluate import action_agreement, clip_sample, latent_and_true_actions
from genie_env.metrics import frame_shifts, horizontal_scrolls


def pooled_psnr(pred: np.ndarray, target: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((pred - target) ** 2)))


def shifted(prev: np.ndarray, shifts: np.ndarray, crop: int) -> np.ndarray:
    """Each frame (H, W, C) of ``prev`` moved by its (dy, dx) from :func:`frame_shifts`, cropped by ``crop``."""
    h, w = prev.shape[1:3]
    return np.stack([p[crop + dy:h - crop + dy, crop + dx:w - crop + dx] for p, (dy, dx) in zip(prev, shifts)])


def mi(codes: np.ndarray, labels: np.ndarray) -> str:
    r = action_agreement(codes, labels)
    return f"{r['mutual information (bits)']:.3f} ({r['mutual information, bias-corrected (bits)']:.3f} corrected)"


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="H5 episodes with actions, of levels no training run used")
    p.add_argument("--lam", default=None, help="a LAM checkpoint to measure on the same pairs")
    p.add_argument("--tokenizers", nargs="+", default=[], help="tokenizer checkpoints to measure on the same pairs")
    p.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--pairs", type=int, default=1500)
    p.add_argument("--max_shift", type=int, default=6, help="largest shift searched, in pixels, each axis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_clips", type=int, default=256, help="clips of eval's LAM sample (its --action_clips)")
    p.add_argument("--eval_clip_len", type=int, default=8, help="their length (eval: the dynamics model's window)")
    args = p.parse_args()
    torch.set_num_threads(1)
    lam = load_model(args.lam, "lam").eval() if args.lam else None
    tokenizers = [(path, load_model(path, "tokenizer").eval()) for path in args.tokenizers]
    m = args.max_shift
    if lam is not None:
        ds, idx = clip_sample(args.data_dir, args.eval_clip_len, lam.cfg.image_size, None, None, args.eval_clips, args.seed)
        latent, true = latent_and_true_actions(lam, ds, idx, 64, "cpu")
        print(f"eval's LAM sample, {len(idx)} clips of {args.eval_clip_len} frames ({len(latent)} transitions): "
              f"MI(code; true action) {mi(latent, true)} bits")
    # A LAM with min_history h reads each pair after h frames of its past, at the same stride.
    h = lam.cfg.min_history if lam is not None else 0
    for stride in args.strides:
        ds = ClipDataset(args.data_dir, clip_len=(h + 1) * stride + 1)
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))[:args.pairs].tolist()
        items = [ds[i] for i in idx]
        with_past = torch.stack([it["frames"][::stride] for it in items])  # (N, h + 2, C, H, W)
        video = with_past[:, -2:]  # (N, 2, C, H, W): the pair
        true = np.array([int(it["actions"][h * stride]) for it in items])
        x = video.permute(0, 1, 3, 4, 2).numpy()  # (N, 2, H, W, C)
        prev, nxt = x[:, 0], x[:, 1]
        sh = frame_shifts(prev, nxt, m, m)
        interior = nxt[:, m:-m, m:-m]
        sign = np.sign(sh) + 1  # 0: moved down/right, 1: still, 2: moved up/left (the scene)
        motion = sign[:, 0] * 3 + sign[:, 1]
        share = lambda a: " / ".join(f"{np.mean(a == k):.2f}" for k in (2, 1, 0))  # noqa: E731
        print(f"stride {stride}: {len(idx)} pairs; copy PSNR {pooled_psnr(prev, nxt):.2f} dB; "
              f"on the interior crop copy {pooled_psnr(prev[:, m:-m, m:-m], interior):.2f}, "
              f"best shift {pooled_psnr(shifted(prev, sh, m), interior):.2f} dB")
        print(f"  scene moved left/still/right {share(sign[:, 1])}; up/still/down {share(sign[:, 0])}")
        print(f"  MI(true action; motion sign) {mi(motion, true)}; "
              f"MI(true action; horizontal sign) {mi(sign[:, 1], true)} bits")
        if lam is not None:
            codes, recon, mirrored = [], [], []
            for s in range(0, len(video), 256):
                out = lam(with_past[s:s + 256])
                codes.append(out["actions"][:, -1])
                recon.append(out["recon"][:, -1])
                mirrored.append(lam.infer_actions(with_past[s:s + 256].flip(-1))[:, -1])
            codes, mirrored = torch.cat(codes).numpy(), torch.cat(mirrored).numpy()
            recon = torch.cat(recon).permute(0, 2, 3, 1).numpy()
            print(f"  LAM: next-frame PSNR {pooled_psnr(recon, nxt):.2f} dB; MI(code; true action) {mi(codes, true)}; "
                  f"MI(code; motion sign) {mi(codes, motion)}; MI(code; horizontal sign) {mi(codes, sign[:, 1])}; "
                  f"MI(code; vertical sign) {mi(codes, sign[:, 0])} bits; "
                  f"same code for the pair mirrored left-right {np.mean(codes == mirrored):.2f}")
        # The horizontal-only search that eval uses, on the real pairs as on the reconstructions.
        real = horizontal_scrolls(video, m)[:, 0]
        scrolling = real != 0
        for path, tok in tokenizers:
            recon = torch.cat([tok.decode(tok.encode(video[s:s + 256])) for s in range(0, len(video), 256)])
            kept = horizontal_scrolls(recon, m)[:, 0] == real
            print(f"  tokenizer {path}: reconstruction PSNR {pooled_psnr(recon.permute(0, 1, 3, 4, 2).numpy(), x):.2f} dB; "
                  f"pairs that scroll sideways {scrolling.sum()}, reconstructions that scroll alike "
                  f"{kept[scrolling].mean() if scrolling.any() else float('nan'):.3f}")


if __name__ == "__main__":
    main()
