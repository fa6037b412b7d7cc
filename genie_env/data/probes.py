"""Key probes: what the real game does when a key is held, to score a world's arrow keys against.

Holding "left" from a CoinRun episode's first frame scrolls nothing in the real game (the agent
starts against the level's left wall), and from an arbitrary frame a held key may meet a wall, a
crate or the air. A world's arrow keys are therefore scored on probes: real states of levels no
training run used, each reached by a random warm-up (actions held for 1..8 steps, as the
collector plays), saved with Procgen's ``get_state``, and from it each key held for ``steps``
steps in the real game (``set_state`` in between, so every key starts from the same state).

``genie-env probes --env coinrun --probes 64 --out data/coinrun_probes.h5`` writes one H5 file:

- ``prompts`` uint8 (N, H, W, 3): the frame each probe starts from;
- ``frames`` uint8 (N, K, steps, H, W, 3): the real frames while key k is held;
- ``scroll`` int64 (N, K): the scene's total rightward scroll over those steps in pixels
  (:func:`genie_env.metrics.frame_shifts`, as ``genie-env eval`` measures a world's);
- ``level_seeds`` and ``warmup`` int64 (N,); attributes ``keys`` (JSON list), ``env``, ``steps``,
  ``seed``, ``format``.

A probe whose warm-up or key hold ends an episode is drawn again, so every hold is one level.
``genie-env eval --key_probes FILE`` holds each mapped key from each probe's prompt and reports
how often the world scrolls the way the real game did.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import h5py
import numpy as np

from genie_env.checkpoint import atomic_open
from genie_env.data.collect import PROCGEN_COMBOS, PROCGEN_GAMES
from genie_env.data.h5 import open_h5
from genie_env.metrics import frame_shifts
from genie_env.progress import progress

log = logging.getLogger(__name__)

FORMAT = "genie-env key probes 1"
KEYS = {"right": PROCGEN_COMBOS.index(("RIGHT",)), "left": PROCGEN_COMBOS.index(("LEFT",))}
MAX_SHIFT = 4  # pixels a frame; CoinRun's camera moves 0 or 1


def collect_key_probes(out: str | Path, env_name: str = "coinrun", num_probes: int = 64, seed: int = 2000,
                       steps: int = 6, min_warmup: int = 8, max_warmup: int = 64, action_repeat: int = 8,
                       distribution_mode: str = "hard") -> Path:
    """Write ``num_probes`` key probes of a Procgen game to ``out`` (an H5 file); returns its path.

    Probe i plays level ``seed + i`` (drawn again, from a fresh level seed, when an episode ends in
    its warm-up or key holds): ``min_warmup..max_warmup`` random steps, then each key of
    :data:`KEYS` held ``steps`` steps from the same saved state.
    """
    if num_probes < 1 or steps < 1:
        raise ValueError(f"need at least one probe and one step, got {num_probes} probes of {steps} steps")
    if env_name not in PROCGEN_GAMES:
        raise ValueError(f"key probes need a Procgen game ({', '.join(PROCGEN_GAMES)}), got {env_name!r}")
    if not 0 <= min_warmup <= max_warmup:
        raise ValueError(f"need 0 <= min_warmup <= max_warmup, got {min_warmup} and {max_warmup}")
    try:
        from procgen import ProcgenGym3Env
    except ImportError as e:
        raise RuntimeError("Procgen is not installed: pip install 'genie-env[procgen]'") from e
    rng = np.random.default_rng(seed)
    n_actions = len(PROCGEN_COMBOS)
    prompts, frames, scrolls, level_seeds, warmups = [], [], [], [], []
    level = seed
    with progress(total=num_probes, desc=f"probes {env_name}", unit="probe") as bar:
        while len(prompts) < num_probes:
            env = ProcgenGym3Env(num=1, env_name=env_name, distribution_mode=distribution_mode, rand_seed=level)
            warmup = int(rng.integers(min_warmup, max_warmup + 1))
            _, obs, _ = env.observe()
            ended, a, hold = False, 0, 0
            for _ in range(warmup):
                if hold == 0:
                    a, hold = int(rng.integers(n_actions)), int(rng.integers(1, action_repeat + 1))
                hold -= 1
                env.act(np.array([a]))
                _, obs, first = env.observe()
                ended |= bool(first[0])
            prompt = obs["rgb"][0].copy()
            state = env.callmethod("get_state")
            held, scroll = [], []
            for action in KEYS.values():
                env.callmethod("set_state", state)
                prev, clip, total = prompt, [], 0
                for _ in range(steps):
                    env.act(np.array([action]))
                    _, obs, first = env.observe()
                    ended |= bool(first[0])
                    clip.append(obs["rgb"][0].copy())
                    total += int(frame_shifts(prev[None], clip[-1][None], MAX_SHIFT)[0, 1])
                    prev = clip[-1]
                held.append(np.stack(clip))
                scroll.append(total)
            if not ended:
                prompts.append(prompt)
                frames.append(np.stack(held))
                scrolls.append(scroll)
                level_seeds.append(level)
                warmups.append(warmup)
                bar.update(1)
            level = seed + len(prompts) if not ended else int(rng.integers(2**31 - 1))
    path = Path(out)
    with atomic_open(path) as raw, h5py.File(raw, "w") as f:
        f.create_dataset("prompts", data=np.stack(prompts))
        f.create_dataset("frames", data=np.stack(frames), compression="lzf")
        f.create_dataset("scroll", data=np.array(scrolls, dtype=np.int64))
        f.create_dataset("level_seeds", data=np.array(level_seeds, dtype=np.int64))
        f.create_dataset("warmup", data=np.array(warmups, dtype=np.int64))
        f.attrs.update(format=FORMAT, keys=json.dumps(list(KEYS)), env=env_name, steps=steps, seed=seed,
                       distribution_mode=distribution_mode)
    real = np.array(scrolls)
    log.info("wrote %d key probes of %s to %s; the real game scrolls right under right in %.0f%%, left under "
             "left in %.0f%%", num_probes, env_name, path, 100 * (real[:, 0] > 0).mean(), 100 * (real[:, 1] < 0).mean())
    return path


def is_key_probes(path: str | Path) -> bool:
    """Whether ``path`` is a readable H5 file written by :func:`collect_key_probes`."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT
    except OSError:
        return False


def load_key_probes(path: str | Path) -> dict:
    """A probes file as arrays: ``prompts`` (N, H, W, 3) uint8, ``frames`` (N, K, steps, H, W, 3),
    ``scroll`` (N, K), ``keys`` (K names) and ``steps``; a file of another kind or shape is refused
    with what is wrong and how to make a good one."""
    path = Path(path)
    fix = "Write one with: genie-env probes --env coinrun --out FILE.h5"
    with open_h5(path, fix, fix) as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path}: not a key probes file (format {f.attrs.get('format')!r}, "
                             f"expected {FORMAT!r}). {fix}")
        missing = [k for k in ("prompts", "frames", "scroll") if k not in f]
        if missing:
            raise ValueError(f"{path}: key probes file lacks {missing}. {fix}")
        out = {"prompts": f["prompts"][()], "frames": f["frames"][()], "scroll": f["scroll"][()],
               "keys": json.loads(f.attrs["keys"]), "steps": int(f.attrs["steps"])}
    n, k = len(out["prompts"]), len(out["keys"])
    shape = out["prompts"].shape
    if (out["prompts"].ndim != 4 or shape[-1] != 3 or out["scroll"].shape != (n, k)
            or out["frames"].shape != (n, k, out["steps"], *shape[1:])):
        raise ValueError(f"{path}: inconsistent key probes: prompts {shape}, frames {out['frames'].shape}, "
                         f"scroll {out['scroll'].shape} for keys {out['keys']} and {out['steps']} steps. {fix}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="coinrun", help="a Procgen game (default: coinrun)")
    p.add_argument("--out", required=True, help="the H5 file to write")
    p.add_argument("--probes", type=int, default=64, help="probes to record (default: 64)")
    p.add_argument("--seed", type=int, default=2000,
                   help="first level seed (default: 2000; the collectors' training data uses 0, held-out 1000)")
    p.add_argument("--steps", type=int, default=6, help="steps each key is held (default: 6, as eval's check)")
    p.add_argument("--min_warmup", type=int, default=8)
    p.add_argument("--max_warmup", type=int, default=64)
    p.add_argument("--distribution_mode", default="hard")


def run(args: argparse.Namespace) -> int:
    collect_key_probes(args.out, args.env, args.probes, args.seed, args.steps, args.min_warmup, args.max_warmup,
                       distribution_mode=args.distribution_mode)
    return 0
