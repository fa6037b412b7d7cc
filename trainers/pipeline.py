"""The main job end to end: collect CoinRun, train tokenizer -> LAM -> dynamics, evaluate, write a video.

``genie-env pipeline --preset tiny`` runs it on CPU in minutes. With CoinRun's true actions in
the data it also maps the arrow keys to latent actions and scores them against the real game on
key probes (:mod:`genie_env.data.probes`). Each stage is the same code as
``python -m trainers.train_<model>``; a stage whose checkpoint already reached its ``max_steps``
is skipped, so an interrupted pipeline picks up where it stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from genie_env.checkpoint import load_model, load_model_and_config
from genie_env.data.collect import collect_procgen
from genie_env.data.probes import collect_key_probes, load_key_probes
from genie_env.device import resolve_device
from genie_env.evaluate import evaluate_world, format_table
from trainers import train_dynamics, train_lam, train_tokenizer
from trainers.export import procgen_action_map

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
    p.add_argument("--key_probes", type=int, default=32,
                   help="CoinRun key probes to score the arrow keys against the real game (genie-env probes; "
                        "0: no key check, as for data of another game)")


def _stage_args(parser: argparse.ArgumentParser, config: Path, args, extra: list[str] = ()) -> argparse.Namespace:
    argv = ["--config", str(config), "--data_dir", args.data_dir, "--device", args.device,
            "--out_dir", args.out_dir, *extra]
    if args.max_steps is not None:
        argv += ["--max_steps", str(args.max_steps)]
    return parser.parse_args(argv)


def key_check_inputs(lam, args, clip_len: int, out: Path) -> tuple[dict | None, dict | None]:
    """The arrow-key map (from the data's true CoinRun actions, written to ``out/action_map.json``)
    and ``args.key_probes`` key probes (``out/key_probes.h5``, recorded once) for eval's key check;
    (None, None) when they are not wanted or the data have no Procgen actions to map."""
    if args.key_probes < 1:
        return None, None
    try:
        action_map = procgen_action_map(lam, args.data_dir, clip_len)
    except ValueError as e:
        log.info("no arrow-key check: %s", e)
        return None, None
    (out / "action_map.json").write_text(json.dumps(action_map, indent=1))
    path = out / "key_probes.h5"
    probes = load_key_probes(path) if path.exists() else None
    if probes is None or len(probes["prompts"]) != args.key_probes:
        probes = load_key_probes(collect_key_probes(path, num_probes=args.key_probes, seed=args.seed + 2000))
    return action_map, probes


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
    action_map, probes = key_check_inputs(lam, args, dyn_stage.data.clip_len, out)
    results = evaluate_world(tok, lam, dyn, args.data_dir, out, num_clips=16, seed=args.seed,
                             video_name="rollout.mp4", data_config=dyn_stage.data, action_map=action_map,
                             key_probes=probes)
    print("\n" + format_table(results))
    return 0
