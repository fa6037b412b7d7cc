"""``genie-env generate``: a video from a prompt image and a list of latent actions.

    genie-env generate --prompt path/to/prompt_image.png --actions "0,1,2,3,4,5,6,7" \\
        --output output.mp4 --num_frames 16 --device cuda

Paths left out default to the bundled CoinRun model and its first prompt. The actions repeat
until ``num_frames`` frames (the prompt included) are made.
"""
from __future__ import annotations

import argparse
import logging

import torch

from genie_env.bundled import make_world
from genie_env.cli import add_world_arguments, check_positive
from genie_env.env import frames_to_obs
from genie_env.video import write_video

log = logging.getLogger("genie_env.generate")


def parse_actions(text: str, num_actions: int) -> list[int]:
    try:
        actions = [int(a) for a in text.replace(" ", "").split(",") if a != ""]
    except ValueError as e:
        raise ValueError(f"--actions must be comma-separated integers like '0,1,2', got {text!r}") from e
    if not actions:
        raise ValueError("--actions is empty; give at least one action, e.g. '0,1,2'")
    bad = [a for a in actions if not 0 <= a < num_actions]
    if bad:
        raise ValueError(f"--actions {bad} out of range: this model has {num_actions} latent actions (0..{num_actions - 1})")
    return actions


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_world_arguments(p)
    p.add_argument("--actions", default="0,1,2,3,4,5,6,7", help="comma-separated latent actions, repeated")
    p.add_argument("--output", default="output.mp4", help=".mp4 (PyAV) or .gif")
    p.add_argument("--num_frames", type=int, default=16, help="frames in the video, the prompt included")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--scale", type=int, default=4, help="upscale factor of the written frames")


@torch.no_grad()
def run(args: argparse.Namespace) -> int:
    check_positive(args, "num_frames", "fps", "scale")
    dev, world, prompts = make_world(args.tokenizer_path, args.dynamics_path, args.prompt, args.device, 1,
                                     args.maskgit_steps, args.temperature, args.dtype, args.compile,
                                     args.action_guidance)
    actions = parse_actions(args.actions, world.num_actions)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    frames = [world.reset(prompts[:1])]
    for k in range(args.num_frames - 1):
        frames.append(world.step(torch.tensor([actions[k % len(actions)]]), generators=[gen]).frames)
    path = write_video(args.output, frames_to_obs(torch.cat(frames)), fps=args.fps, scale=args.scale)
    log.info("wrote %d frames to %s", len(frames), path)
    print(path)
    return 0
