"""``genie-env eval``: world-model quality on held-out episodes, as a JSON and a table.

    genie-env eval --data_dir data/coinrun          # the bundled model
    genie-env eval --data_dir D --tokenizer_path T --lam_path L --dynamics_path X --out eval/

- tokenizer: reconstruction PSNR and SSIM;
- LAM: codebook usage and perplexity, next-frame PSNR, and with true actions in the data the
  accuracy of the best latent -> true action mapping and their mutual information (bits);
- dynamics: PSNR of an autoregressive rollout from one prompt frame with the LAM's inferred
  actions at each t, and the Genie paper's delta-t PSNR at t = 4: PSNR(x_t, x^_t) with inferred
  actions minus PSNR(x_t, x^'_t) with actions drawn uniformly at random;
- a video: ground truth | rollout with inferred actions | rollout with random actions.

PSNR and SSIM stand in for FVD, whose I3D weights cannot be downloaded here.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genie_env.checkpoint import load_model
from genie_env.data.h5 import ClipDataset
from genie_env.device import resolve_device, resolve_dtype
from genie_env.env import bundled_paths
from genie_env.metrics import psnr_per_frame, rollout
from genie_env.video import write_video

log = logging.getLogger("genie_env.eval")


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of images (..., C, H, W) in [0, 1]: 11x11 Gaussian window, sigma 1.5 (Wang et al., 2004)."""
    x, y = pred.float().flatten(0, -4), target.float().flatten(0, -4)
    c = x.shape[1]
    g = torch.exp(-(torch.arange(11, dtype=torch.float32, device=x.device) - 5) ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(c, 1, 11, 11)

    def blur(t):
        return F.conv2d(t, window, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean()


def action_agreement(latent: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """How well latent actions predict true ones: best-mapping accuracy and mutual information."""
    joint = np.zeros((latent.max() + 1, true.max() + 1))
    np.add.at(joint, (latent, true), 1)
    p = joint / joint.sum()
    pl, pt = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mi = float((p[nz] * np.log2(p[nz] / (pl @ pt)[nz])).sum())
    return {"accuracy": float(joint.max(1).sum() / joint.sum()),
            "chance accuracy": float(pt.max()), "mutual information (bits)": mi}


@torch.no_grad()
def evaluate(tokenizer, lam, dynamics, data_dir, out_dir: str | Path | None = None, num_clips: int = 32,
             clip_len: int | None = None, split: str = "val", seed: int = 0, batch: int = 16,
             video_name: str = "side_by_side.mp4") -> dict:
    """The numbers listed in the module docstring, on ``num_clips`` clips of ``split`` episodes."""
    dev = next(dynamics.parameters()).device
    stage = dynamics.stage_config.data if hasattr(dynamics, "stage_config") else None
    clip_len = clip_len or min(dynamics.cfg.max_frames, tokenizer.cfg.max_frames)
    val = ClipDataset(data_dir, clip_len=clip_len, image_size=tokenizer.cfg.image_size, split=split,
                      val_fraction=stage.val_fraction if stage else 0.1, seed=stage.seed if stage else 0)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(val), generator=g)[: min(num_clips, len(val))].tolist()
    sums: dict[str, list] = {}
    latents, trues = [], []
    first = None
    for start in range(0, len(idx), batch):
        items = [val[i] for i in idx[start:start + batch]]
        video = torch.stack([it["frames"] for it in items]).to(dev)
        n = video.shape[0]
        recon = tokenizer.decode(tokenizer.encode(video))
        lam_out = lam.eval()(video)
        actions = lam_out["actions"]
        gens = [torch.Generator(device=dev).manual_seed(seed + start + i) for i in range(n)]
        inferred = rollout(tokenizer, dynamics, video, actions, generators=gens)
        random_actions = torch.randint(0, dynamics.cfg.num_actions, actions.shape, generator=g).to(dev)
        gens = [torch.Generator(device=dev).manual_seed(seed + start + i) for i in range(n)]
        randomized = rollout(tokenizer, dynamics, video, random_actions, generators=gens)
        for key, value in (("tok_psnr", psnr_per_frame(recon, video).mean()), ("tok_ssim", ssim(recon, video)),
                           ("lam_psnr", psnr_per_frame(lam_out["recon"], video[:, 1:]).mean()),
                           ("roll_inferred", psnr_per_frame(inferred, video)),
                           ("roll_random", psnr_per_frame(randomized, video))):
            sums.setdefault(key, []).append((value.cpu() * n, n))
        latents.append(actions.flatten().cpu())
        if "actions" in items[0] and not torch.is_floating_point(items[0]["actions"]):
            trues.append(torch.stack([it["actions"][:-1] for it in items]).flatten())
        if first is None:
            first = (video[0], inferred[0], randomized[0])

    def mean(key):
        return sum(v for v, _ in sums[key]) / sum(n for _, n in sums[key])

    p_inf, p_rand = mean("roll_inferred"), mean("roll_random")
    latent = torch.cat(latents).numpy()
    counts = np.bincount(latent, minlength=lam.cfg.num_actions) / len(latent)
    nz = counts[counts > 0]
    t = min(4, clip_len - 1)  # frames counted from 0 here: index 4 is the paper's t = 4 after the prompt
    results = {
        "clips": len(idx), "clip_len": clip_len, "split": split,
        "tokenizer PSNR (dB)": float(mean("tok_psnr")), "tokenizer SSIM": float(mean("tok_ssim")),
        "LAM next-frame PSNR (dB)": float(mean("lam_psnr")),
        "LAM codebook usage": float((counts > 0).mean()),
        "LAM perplexity": float(np.exp(-(nz * np.log(nz)).sum())),
        "rollout PSNR by t, inferred actions (dB)": [round(float(x), 3) for x in p_inf[1:]],
        "rollout PSNR by t, random actions (dB)": [round(float(x), 3) for x in p_rand[1:]],
        f"rollout PSNR at t={t}, inferred actions (dB)": float(p_inf[t]),
        f"rollout PSNR at t={t}, random actions (dB)": float(p_rand[t]),
        f"delta-t PSNR at t={t} (dB)": float(p_inf[t] - p_rand[t]),
    }
    if trues:
        agreement = action_agreement(latent, torch.cat(trues).numpy())
        results.update({f"LAM vs true actions: {k}": v for k, v in agreement.items()})
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results["video"] = str(write_video(out / video_name, torch.cat(first, dim=-1)))
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def format_table(results: dict) -> str:
    lines = [f"{'metric':<52} value"]
    for k, v in results.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        elif isinstance(v, list):
            v = " ".join(f"{x:.1f}" for x in v)
        lines.append(f"{k:<52} {v}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data_dir", required=True, help="H5 episodes; the held-out split is evaluated")
    p.add_argument("--tokenizer_path", default=None)
    p.add_argument("--lam_path", default=None)
    p.add_argument("--dynamics_path", default=None)
    p.add_argument("--out", default="eval", help="folder for results.json and the video")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--clip_len", type=int, default=None, help="default: the models' context length")
    p.add_argument("--split", default="val", choices=["val", "train", "all"])
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32",
                   help="precision of the tokenizer and dynamics model (float32, or bfloat16 to see what it costs)")


def run(args: argparse.Namespace) -> int:
    dev = resolve_device(args.device)
    b = bundled_paths()
    dtype = resolve_dtype(args.dtype, dev)
    tok = load_model(args.tokenizer_path or b["tokenizer"], "tokenizer", dev).to(dtype)
    lam = load_model(args.lam_path or b["lam"], "lam", dev)
    dyn = load_model(args.dynamics_path or b["dynamics"], "dynamics", dev).to(dtype)
    results = evaluate(tok, lam, dyn, args.data_dir, args.out, args.clips, args.clip_len,
                       None if args.split == "all" else args.split, args.seed)
    print(format_table(results))
    return 0
