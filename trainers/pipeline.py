"""The main job end to end: collect CoinRun, train tokenizer -> LAM -> dynamics, evaluate, write a video.

``genie-env pipeline --preset tiny`` runs it on CPU in minutes. Each stage is the same code as
``python -m trainers.train_<model>``; a stage whose checkpoint already reached its ``max_steps``
is skipped, so an interrupted pipeline picks up where it stopped.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from genie_env.checkpoint import load_model, load_model_and_config
from genie_env.data.collect import collect_procgen
from genie_env.device import resolve_device
from genie_env.evaluate import evaluate_world, format_table
from trainers import train_dynamics, train_lam, train_tokenizer

log = logging.getLogger("genie_env.pipeline")

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
PRESETS = {"tiny": CONFIG_ROOT / "tiny", "bundled": CONFIG_ROOT / "bundled",
           "candidate": CONFIG_ROOT / "candidate", "seed": CONFIG_ROOT}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="which configs: tiny (CPU, minutes), bundled (the model shipped in the package, "
                        "CPU, under an hour), candidate (issue 9's 4x4-patch world, CPU, about two hours) "
                        "or seed (the full sizes, GPU)")
    p.add_argument("--data_dir", default="data/coinrun", help="H5 episodes; collected here if empty")
    p.add_argument("--out_dir", default="runs/pipeline", help="checkpoints, logs, video and results")
    p.add_argument("--episodes", type=int, default=60, help="CoinRun episodes to collect when data_dir is empty")
    p.add_argument("--max_episode_steps", type=int, default=200, help="cap on a collected episode's length")
    p.add_argument("--action_repeat", type=int, default=1,
                   help="hold each random action for 1..N steps when collecting (the bundled model used 8)")
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
        log.info("collecting %d CoinRun episodes into %s", args.episodes, data_dir)
        collect_procgen(data_dir, "coinrun", num_episodes=args.episodes, seed=args.seed,
                        max_episode_steps=args.max_episode_steps, action_repeat=args.action_repeat)
    out = Path(args.out_dir)

    tok_path = train_tokenizer.main(_stage_args(train_tokenizer.base_parser("tokenizer"),
                                                configs / "tokenizer_config.yaml", args))
    lam_path = train_lam.main(_stage_args(train_lam.base_parser("lam"), configs / "lam_config.yaml", args))
    dyn_path = train_dynamics.main(_stage_args(
        train_dynamics.parser(), configs / "dynamics_config.yaml", args,
        ["--tokenizer_path", str(tok_path), "--lam_path", str(lam_path)]))

    dev = resolve_device(args.device)
    tok, lam = load_model(tok_path, "tokenizer", dev), load_model(lam_path, "lam", dev)
    dyn, dyn_stage = load_model_and_config(dyn_path, "dynamics", dev)
    results = evaluate_world(tok, lam, dyn, args.data_dir, out, num_clips=16, seed=args.seed,
                             video_name="rollout.mp4", data_config=dyn_stage.data)
    print("\n" + format_table(results))
    return 0
