"""``genie-env filmstrip``: a PNG of what a world shows, because people look before they read.

    genie-env filmstrip --out docs/bundled_filmstrip.png                        # bundled model, its first prompt
    genie-env filmstrip --data_dir data/coinrun_heldout --split all --out f.png # plus a held-out clip

The picture has one row per latent action: the prompt, then ``--frames`` frames generated while
that action is held (labelled with its arrow key when the model has an ``action_map.json``).
With ``--data_dir`` it adds, for one clip of held-out episodes: the ground truth, the
tokenizer's reconstruction, the rollout from its first frame under the LAM's inferred actions,
and the rollout under random actions.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from genie_env.bundled import bundled_paths, load_action_map, load_world_models
from genie_env.checkpoint import load_model
from genie_env.cli import check_positive
from genie_env.data.h5 import ClipDataset
from genie_env.device import resolve_device
from genie_env.evaluate import override_sampler
from genie_env.metrics import decode_long, encode_long, rollout
from genie_env.prompts import load_prompts
from genie_env.video import to_uint8_frames
from genie_env.world import World

LABEL_WIDTH = 88


def _row(frames: torch.Tensor, label: str, scale: int) -> Image.Image:
    """Frames (T, 3, H, W) in [0, 1] side by side, upscaled, with a label on the left."""
    strip = np.concatenate(list(to_uint8_frames(frames)), axis=1)
    img = Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST)
    row = Image.new("RGB", (LABEL_WIDTH + img.width, img.height), "white")
    row.paste(img, (LABEL_WIDTH, 0))
    ImageDraw.Draw(row).multiline_text((4, 4), label, fill="black")
    return row


def _stack(rows: list[Image.Image], gap: int = 2) -> Image.Image:
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height + gap for r in rows)), "white")
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + gap
    return out


@torch.no_grad()
def action_rows(world: World, prompt: torch.Tensor, frames: int, action_map: dict | None,
                scale: int, seed: int = 0) -> list[Image.Image]:
    """One row per latent action: ``prompt`` (3, H, W), then ``frames`` frames holding the action."""
    n = world.num_actions
    keys = {v: k for k, v in (action_map or {}).items() if isinstance(v, int)}
    gens = [torch.Generator(device=world.device).manual_seed(seed) for _ in range(n)]
    video = [world.reset(prompt[None].expand(n, -1, -1, -1))]
    actions = torch.arange(n)
    for _ in range(frames):
        video.append(world.step(actions, generators=gens).frames)
    video = torch.stack(video, dim=1).cpu()  # (n, 1 + frames, 3, H, W)
    return [_row(video[a], f"action {a}\n{keys.get(a, '')}", scale) for a in range(n)]


@torch.no_grad()
def clip_rows(tokenizer, lam, dynamics, video: torch.Tensor, scale: int, seed: int = 0) -> list[Image.Image]:
    """Ground truth | reconstruction | rollout (inferred actions) | rollout (random actions) of one
    clip (T, 3, H, W), one row each."""
    dev = next(dynamics.parameters()).device
    video = video[None].to(dev)
    recon = decode_long(tokenizer, encode_long(tokenizer, video))
    inferred = lam.infer_actions(video)
    g = torch.Generator().manual_seed(seed)
    random = torch.randint(0, dynamics.cfg.num_actions, inferred.shape, generator=g).to(dev)
    rows = [("ground\ntruth", video), ("tokenizer\nrecon", recon)]
    for name, acts in (("rollout\ninferred a", inferred), ("rollout\nrandom a", random)):
        gens = [torch.Generator(device=dev).manual_seed(seed)]
        rows.append((name, rollout(tokenizer, dynamics, video, acts, generators=gens)))
    return [_row(v[0].cpu(), label, scale) for label, v in rows]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer_path", default=None, help="default: the bundled CoinRun tokenizer")
    p.add_argument("--lam_path", default=None, help="default: the bundled LAM (needed with --data_dir)")
    p.add_argument("--dynamics_path", default=None, help="default: the bundled CoinRun dynamics model")
    p.add_argument("--prompt", default=None, help="an image, an H5 file or a folder (default: bundled prompts)")
    p.add_argument("--prompt_index", type=int, default=0, help="which prompt frame of --prompt")
    p.add_argument("--data_dir", default=None, help="H5 episodes for the ground-truth rows (optional)")
    p.add_argument("--split", default="val", choices=["val", "train", "all"])
    p.add_argument("--clip", type=int, default=0, help="which clip of --data_dir")
    p.add_argument("--frames", type=int, default=16, help="generated frames per row")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--action_guidance", type=float, default=None,
                   help="action guidance of every generated row (default: the checkpoint's; 0: off)")
    p.add_argument("--out", default="filmstrip.png")


def run(args: argparse.Namespace) -> int:
    check_positive(args, "frames", "scale")
    dev = resolve_device(args.device)
    tok, dyn = load_world_models(args.tokenizer_path, args.dynamics_path, dev)
    override_sampler(dyn, {"action_guidance": args.action_guidance})  # every row, the ground-truth rollouts too
    world = World(tok, dyn, dyn.cfg.num_actions, dev)
    prompts = load_prompts(args.prompt if args.prompt is not None else bundled_paths()["prompts"],
                           world.image_size, args.prompt or "bundled prompts")
    if not 0 <= args.prompt_index < prompts.shape[0]:
        raise ValueError(f"--prompt_index {args.prompt_index} out of range: {prompts.shape[0]} prompt frames")
    rows = action_rows(world, prompts[args.prompt_index], args.frames,
                       load_action_map(args.dynamics_path), args.scale, args.seed)
    if args.data_dir is not None:
        lam = load_model(args.lam_path or bundled_paths()["lam"], "lam", dev)
        ds = ClipDataset(args.data_dir, clip_len=args.frames + 1, image_size=world.image_size,
                         split=None if args.split == "all" else args.split)
        if not 0 <= args.clip < len(ds):
            raise ValueError(f"--clip {args.clip} out of range: {len(ds)} clips of {args.frames + 1} frames")
        rows += clip_rows(tok, lam, dyn, ds[args.clip]["frames"], args.scale, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _stack(rows).save(out)
    print(out)
    return 0
