"""The ``genie-env`` command: one entry point, a subcommand per job."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from genie_env.config import load_config
from genie_env.models import build_model
from genie_env.nn.st_transformer import count_parameters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genie-env", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    # The subcommands import the flag helpers below, so they are imported once this module is whole.
    from genie_env import evaluate, filmstrip, generate, play
    from genie_env.data import collect, probes
    from trainers import export, pipeline, prune
    for name, module, help_text in (
            ("collect", collect, "record episodes of a Procgen or Gymnasium env to H5 files"),
            ("probes", probes, "record what the real game does when each arrow key is held, for eval's key check"),
            ("pipeline", pipeline, "collect CoinRun, train the three models, evaluate, write a video"),
            ("generate", generate, "write a video from a prompt image and latent actions"),
            ("play", play, "play a Genie world with the keyboard (pygame)"),
            ("export", export, "package a trained run: weights-only checkpoints + prompt frames"),
            ("prune", prune, "cut a tokenizer's codebook to the codes its training frames use most"),
            ("eval", evaluate, "world-model quality on held-out episodes: PSNR, SSIM, delta-t PSNR, video"),
            ("filmstrip", filmstrip, "a PNG: frames under each latent action, ground truth | reconstruction | rollout")):
        p = sub.add_parser(name, help=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)

    p = sub.add_parser("info", help="build models from YAML configs and print their parameter counts")
    p.add_argument("configs", nargs="*", help="stage YAML files (default: the three seed configs in configs/)")
    p.set_defaults(func=info)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return reporting_errors(f"genie-env {args.command}", args.func, args)


def reporting_errors(prog: str, func: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """Run ``func(args)``: its exit code (None counts as 0), or the error a user can fix (bad input, a missing file, a
    stopped run: ValueError, FileNotFoundError, RuntimeError and their kin) as one line and 2."""
    try:
        return int(func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def add_world_arguments(p: argparse.ArgumentParser) -> None:
    """The command-line options that pick and tune a world, shared by ``generate`` and ``play``."""
    p.add_argument("--tokenizer_path", default=None, help="default: the bundled CoinRun tokenizer")
    p.add_argument("--dynamics_path", default=None, help="default: the bundled CoinRun dynamics model")
    p.add_argument("--prompt", default=None, help="an image, an H5 file or a folder of them (default: bundled)")
    p.add_argument("--device", default="auto")
    p.add_argument("--maskgit_steps", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--temperature", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--action_guidance", type=float, default=None,
                   help="strengthen what the chosen action changes (0: off; > 0 costs a second pass; "
                        "default: the checkpoint's)")
    p.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16 (faster in batches, less exact)")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the per-frame steps (slow first steps); MODE e.g. reduce-overhead")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse integer flags below 1, naming the flag."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")


def info(args: argparse.Namespace) -> int:
    """Print each model's parameter count, built from its YAML config."""
    paths = args.configs or [str(Path("configs") / f"{k}_config.yaml") for k in ("tokenizer", "lam", "dynamics")]
    total = 0
    print(f"{'config':<40} {'kind':<10} {'parameters':>14}")
    for path in paths:
        cfg = load_config(path)
        n = count_parameters(build_model(cfg.kind, cfg.model))
        total += n
        print(f"{path:<40} {cfg.kind:<10} {n:>14,}")
    print(f"{'total':<40} {'':<10} {total:>14,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
