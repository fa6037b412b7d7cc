"""The main job end to end: collect CoinRun, train tokenizer -> LAM -> dynamics, evaluate, write a video.

``genie-env pipeline --preset tiny`` runs it on CPU in minutes. Each stage is the same code as
``python -m trainers.train_<model>``; a stage whose checkpoint already reached its ``max_steps``
is skipped, so an interrupted pipeline picks up where it stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from genie_env.checkpoint import load_model
from genie_env.data.h5 import ClipDataset
from genie_env.metrics import psnr_per_frame, rollout
from genie_env.video import write_video
from trainers import train_dynamics, train_lam, train_tokenizer

log = logging.getLogger("genie_env.pipeline")

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
PRESETS = {"tiny": CONFIG_ROOT / "tiny", "bundled": CONFIG_ROOT / "bundled", "seed": CONFIG_ROOT}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="which configs: tiny (CPU, minutes) or seed (the full sizes, GPU)")
    p.add_argument("--data_dir", default="data/coinrun", help="H5 episodes; collected here if empty")
    p.add_argument("--out_dir", default="runs/pipeline", help="checkpoints, logs, video and results")
    p.add_argument("--episodes", type=int, default=60, help="CoinRun episodes to collect when data_dir is empty")
    p.add_argument("--max_episode_steps", type=int, default=200, help="cap on a collected episode's length")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--max_steps", type=int, default=None, help="override every stage's max_steps (smoke runs)")
    p.add_argument("--seed", type=int, default=0)


def _stage_args(parser: argparse.ArgumentParser, config: Path, args, extra: list[str] = ()) -> argparse.Namespace:
    argv = ["--config", str(config), "--data_dir", args.data_dir, "--device", args.device,
            "--out_dir", args.out_dir, *extra]
    if args.max_steps is not None:
        argv += ["--max_steps", str(args.max_steps)]
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    configs = PRESETS[args.preset]
    data_dir = Path(args.data_dir)
    if not any(data_dir.glob("*.h5")):
        from genie_env.data.collect import collect_procgen
        log.info("collecting %d CoinRun episodes into %s", args.episodes, data_dir)
        collect_procgen(data_dir, "coinrun", num_episodes=args.episodes, seed=args.seed,
                        max_episode_steps=args.max_episode_steps)
    out = Path(args.out_dir)

    tok_path = train_tokenizer.main(_stage_args(train_tokenizer.base_parser("tokenizer"),
                                                configs / "tokenizer_config.yaml", args))
    lam_path = train_lam.main(_stage_args(train_lam.base_parser("lam"), configs / "lam_config.yaml", args))
    dyn_path = train_dynamics.main(_stage_args(
        train_dynamics.parser(), configs / "dynamics_config.yaml", args,
        ["--tokenizer_path", str(tok_path), "--lam_path", str(lam_path)]))

    results = evaluate(tok_path, lam_path, dyn_path, args.data_dir, out, args.device, args.seed)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'metric':<44} value")
    for k, v in results.items():
        print(f"{k:<44} {v if isinstance(v, str) else f'{v:.3f}'}")
    return 0


@torch.no_grad()
def evaluate(tok_path, lam_path, dyn_path, data_dir, out: Path, device: str = "auto", seed: int = 0) -> dict:
    """Held-out numbers for the three checkpoints, and a video: truth | inferred actions | random actions."""
    from genie_env.device import resolve_device
    dev = resolve_device(device)
    tok = load_model(tok_path, "tokenizer", dev)
    lam = load_model(lam_path, "lam", dev)
    dyn = load_model(dyn_path, "dynamics", dev)
    val = ClipDataset(data_dir, clip_len=dyn.stage_config.data.clip_len, image_size=tok.cfg.image_size, split="val",
                      val_fraction=dyn.stage_config.data.val_fraction, seed=dyn.stage_config.data.seed)
    n = min(len(val), 16)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(val), generator=g)[:n].tolist()
    video = torch.stack([val[i]["frames"] for i in idx]).to(dev)
    recon = tok.decode(tok.encode(video))
    actions = lam.infer_actions(video)
    lam_pred = lam(video)["recon"]
    gens = lambda: [torch.Generator(device=dev).manual_seed(seed + i) for i in range(n)]  # noqa: E731
    inferred = rollout(tok, dyn, video, actions, generators=gens())
    random_actions = torch.randint(0, dyn.cfg.num_actions, actions.shape, generator=g).to(dev)
    randomized = rollout(tok, dyn, video, random_actions, generators=gens())
    p_inf = psnr_per_frame(inferred, video)
    p_rand = psnr_per_frame(randomized, video)
    t = min(4, video.shape[1] - 1)
    results = {
        "held-out clips": float(n),
        "tokenizer reconstruction PSNR (dB)": float(psnr_per_frame(recon, video).mean()),
        "LAM next-frame PSNR (dB)": float(psnr_per_frame(lam_pred, video[:, 1:]).mean()),
        "LAM actions used (of codebook)": float(actions.unique().numel()),
        "rollout PSNR, inferred actions, mean t>1 (dB)": float(p_inf[1:].mean()),
        f"rollout PSNR at t={t}, inferred actions (dB)": float(p_inf[t]),
        f"rollout PSNR at t={t}, random actions (dB)": float(p_rand[t]),
        f"delta-t PSNR at t={t} (dB)": float(p_inf[t] - p_rand[t]),
    }
    path = write_video(out / "rollout.mp4", torch.cat([video[0], inferred[0], randomized[0]], dim=-1))
    results["video"] = str(path)
    return results
