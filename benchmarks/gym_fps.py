"""Frames per second of one ``gym.make("Genie-v0")`` env stepped with random actions: three
rounds of 30 steps after 5 warm-up steps, each round printed.

    python benchmarks/gym_fps.py                                  # the bundled model
    python benchmarks/gym_fps.py --tokenizer_path T --dynamics_path D --maskgit_steps 6
    python benchmarks/gym_fps.py --tokenizer_path T --dynamics_path D --compile   # torch.compile, still float32
    python benchmarks/gym_fps.py --tokenizer_path T --dynamics_path D --profile 20  # where a step's time goes

``--profile N`` runs N more steps under ``torch.profiler`` and prints the time of the three parts
of a step (MaskGIT passes, committing the frame to the cache, decoding it) and the top operators.
"""
from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
from torch.profiler import ProfilerActivity, profile, record_function

import genie_env  # noqa: F401  (registers Genie-v0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer_path", default=None)
    p.add_argument("--dynamics_path", default=None)
    p.add_argument("--maskgit_steps", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true",
                   help="gym.make(..., compile=True): the warm-up steps then include compiling")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="then profile N steps")
    p.add_argument("--action_guidance", type=float, default=None, help="default: the checkpoint's")
    args = p.parse_args()
    env = gym.make("Genie-v0", tokenizer_path=args.tokenizer_path, dynamics_path=args.dynamics_path,
                   maskgit_steps=args.maskgit_steps, device=args.device, compile=args.compile,
                   action_guidance=args.action_guidance)
    env.reset(seed=0)
    for _ in range(5):
        env.step(0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(30):
            env.step(int(rng.integers(8)))
        w = env.unwrapped.world
        print(f"maskgit_steps {w.maskgit_steps}{' compiled' if args.compile else ''}, action guidance "
              f"{w.action_guidance}: {30 / (time.perf_counter() - t):.1f} frames/s", flush=True)
    if args.profile:
        profile_steps(env, args.profile, rng)


def _labelled(obj, name: str) -> None:
    fn = getattr(obj, name)

    def run(*a, **k):
        with record_function(f"step part: {name}"):
            return fn(*a, **k)
    setattr(obj, name, run)


def profile_steps(env, n: int, rng) -> None:
    world = env.unwrapped.world
    for obj, name in ((world.dynamics, "sample_next"), (world.dynamics, "observe"), (world.tokenizer, "decode_step")):
        _labelled(obj, name)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            env.step(int(rng.integers(8)))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=20), flush=True)


if __name__ == "__main__":
    main()
