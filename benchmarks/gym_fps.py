"""Frames per second of one ``gym.make("Genie-v0")`` env stepped with random actions: three
rounds of 30 steps after 5 warm-up steps, each round printed.

    python benchmarks/gym_fps.py                                  # the bundled model
    python benchmarks/gym_fps.py --tokenizer_path T --dynamics_path D --maskgit_steps 6
"""
from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import genie_env  # noqa: F401  (registers Genie-v0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer_path", default=None)
    p.add_argument("--dynamics_path", default=None)
    p.add_argument("--maskgit_steps", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    env = gym.make("Genie-v0", tokenizer_path=args.tokenizer_path, dynamics_path=args.dynamics_path,
                   maskgit_steps=args.maskgit_steps, device=args.device)
    env.reset(seed=0)
    for _ in range(5):
        env.step(0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(30):
            env.step(int(rng.integers(8)))
        print(f"maskgit_steps {env.unwrapped.world.maskgit_steps}: {30 / (time.perf_counter() - t):.1f} frames/s",
              flush=True)


if __name__ == "__main__":
    main()
