"""Record random-policy episodes to H5 files (the format in ``genie_env.data.h5``).

Procgen games (``coinrun`` and the rest) run through procgen's gym3 interface, in hard mode by
default as in the Genie CoinRun study; any other name is a Gymnasium env id rendered with
``rgb_array``. Each file holds ``episodes_per_file`` episodes: ``frames`` uint8 (T, 64, 64, 3)
for Procgen (the env's render size for Gymnasium), LZF-compressed in chunks of 16 frames;
``actions`` int64 (float32 for continuous actions), ``rewards`` float32, ``dones`` bool and
``episode_starts``. Files are named ``{env}_{seed}_{k:04d}.h5``.

Both collectors record the frame *before* each action, so an episode's terminal frame is never
stored: gym3 resets inside the step that ends an episode and only shows the next episode's
first frame. The last stored frame of an episode is the one its final action was taken in, and
that transition carries the final reward.

``dones`` marks real terminations only (a Procgen reset, or Gymnasium's ``terminated``). An
episode cut by ``max_episode_steps`` or by a Gymnasium time limit ends without one, so a learned
termination head never learns a cut as a death; ``episode_starts`` records every boundary, cut
or not.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from genie_env.checkpoint import atomic_open
from genie_env.progress import progress

log = logging.getLogger(__name__)

PROCGEN_GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball",
                 "fruitbot", "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot")
# Procgen's 15 actions are these key combinations (procgen's own list, in order).
PROCGEN_COMBOS = [("LEFT", "DOWN"), ("LEFT",), ("LEFT", "UP"), ("DOWN",), (), ("UP",), ("RIGHT", "DOWN"),
                  ("RIGHT",), ("RIGHT", "UP"), ("D",), ("A",), ("W",), ("S",), ("Q",), ("E",)]
CHUNK_FRAMES = 16  # a 16-frame clip then decompresses about one chunk


class EpisodeWriter:
    """Buffers finished episodes and writes ``episodes_per_file`` of them per H5 file."""

    def __init__(self, out_dir: str | Path, name: str, seed: int, episodes_per_file: int):
        if episodes_per_file < 1:
            raise ValueError(f"episodes_per_file must be >= 1, got {episodes_per_file}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name = name.replace("/", "_")  # ALE/Breakout-v5 -> ALE_Breakout-v5
        self.seed, self.per_file = seed, episodes_per_file
        self.buffer: list[dict[str, np.ndarray]] = []
        self.files: list[Path] = []
        self.episodes = 0
        self.frames = 0

    def add(self, frames: list, actions: list, rewards: list, dones: list) -> None:
        actions = np.asarray(actions)
        actions = actions.astype(np.int64 if np.issubdtype(actions.dtype, np.integer) else np.float32)
        self.buffer.append({"frames": np.stack(frames).astype(np.uint8), "actions": actions,
                            "rewards": np.asarray(rewards, dtype=np.float32),
                            "dones": np.asarray(dones, dtype=bool)})
        self.episodes += 1
        self.frames += len(frames)
        if len(self.buffer) >= self.per_file:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        path = self.out_dir / f"{self.name}_{self.seed}_{len(self.files):04d}.h5"
        lengths = [len(ep["frames"]) for ep in self.buffer]
        frames = np.concatenate([ep["frames"] for ep in self.buffer])  # (T, H, W, 3) uint8
        # A half-written file never looks like data.
        with atomic_open(path) as raw, h5py.File(raw, "w") as f:
            f.create_dataset("frames", data=frames, compression="lzf",
                             chunks=(min(CHUNK_FRAMES, len(frames)), *frames.shape[1:]))
            for k in ("actions", "rewards", "dones"):
                f.create_dataset(k, data=np.concatenate([ep[k] for ep in self.buffer]))
            f.create_dataset("episode_starts", data=np.cumsum([0, *lengths[:-1]], dtype=np.int64))
        self.files.append(path)
        self.buffer = []


def collect_procgen(out_dir: str | Path, env_name: str = "coinrun", num_episodes: int = 100,
                    distribution_mode: str = "hard", seed: int = 0, max_episode_steps: int | None = None,
                    episodes_per_file: int = 10, action_repeat: int = 1) -> list[Path]:
    """Record ``num_episodes`` random-policy episodes of a Procgen game; returns the files.

    Episodes split where gym3 sets ``first``: the reward observed with a ``first`` frame belongs
    to the previous episode's last transition, which gets ``done=True``. ``max_episode_steps``
    cuts longer episodes (without a done) and starts the next one on a fresh level.

    ``action_repeat`` > 1 holds each uniformly drawn action for 1..action_repeat steps (drawn
    uniformly): a uniform agent that changes action every step mostly jitters in place, while
    held actions run and jump, which gives a latent action model motion to explain.
    """
    if action_repeat < 1:
        raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
    try:
        from procgen import ProcgenGym3Env
    except ImportError as e:
        raise RuntimeError("Procgen is not installed: pip install 'genie-env[procgen]'") from e

    def make(level_seed: int):
        return ProcgenGym3Env(num=1, env_name=env_name, distribution_mode=distribution_mode, rand_seed=level_seed)

    env = make(seed)
    rng = np.random.default_rng(seed)
    n_actions = env.ac_space.eltype.n  # 15 for every Procgen game
    writer = EpisodeWriter(out_dir, env_name, seed, episodes_per_file)
    frames, actions, rewards, dones = [], [], [], []
    _, obs, _ = env.observe()
    a, hold = 0, 0
    with progress(total=num_episodes, desc=f"collect {env_name}", unit="ep") as bar:
        while writer.episodes < num_episodes:
            if hold == 0:
                a = int(rng.integers(n_actions))
                hold = int(rng.integers(1, action_repeat + 1)) if action_repeat > 1 else 1
            hold -= 1
            frames.append(obs["rgb"][0].copy())  # (64, 64, 3) uint8
            actions.append(a)
            env.act(np.array([a]))
            rew, obs, first = env.observe()
            rewards.append(float(rew[0]))
            dones.append(bool(first[0]))
            cut = max_episode_steps is not None and len(frames) >= max_episode_steps
            if first[0] or cut:
                writer.add(frames, actions, rewards, dones)
                frames, actions, rewards, dones = [], [], [], []
                hold = 0
                bar.update(1)
                if cut and not first[0]:
                    # Otherwise the next episode would begin mid-level, which no real episode does.
                    env = make(int(rng.integers(2**31 - 1)))
                    _, obs, _ = env.observe()
    writer.flush()
    log.info("wrote %d episodes (%d frames) of %s to %d files in %s",
             writer.episodes, writer.frames, env_name, len(writer.files), out_dir)
    return writer.files


def _make_gymnasium(env_id: str, max_episode_steps: int | None):
    if env_id.startswith("ALE/"):
        try:
            import ale_py
        except ImportError as e:
            raise RuntimeError(f"{env_id} needs the Atari envs: pip install ale-py") from e
        gym.register_envs(ale_py)
    kwargs = {"render_mode": "rgb_array"}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise RuntimeError(f"cannot make Gymnasium env {env_id!r}: {e}") from e
    modes = env.metadata.get("render_modes", [])
    if "rgb_array" not in modes:
        env.close()
        raise RuntimeError(f"{env_id} cannot render rgb_array frames (it offers {modes}); "
                           "pick an env that renders images")
    if not isinstance(env.action_space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete,
                                         gym.spaces.MultiBinary, gym.spaces.Box)):
        env.close()
        raise RuntimeError(f"{env_id} has a {type(env.action_space).__name__} action space; only "
                           "Discrete, MultiDiscrete, MultiBinary and Box actions fit in an 'actions' array")
    return env


def collect_gymnasium(out_dir: str | Path, env_id: str, num_episodes: int = 100, seed: int = 0,
                      max_episode_steps: int | None = None, episodes_per_file: int = 10) -> list[Path]:
    """Record random-policy episodes of a Gymnasium env, frames from ``render()``; returns the files.

    Episode ``e`` is reset with ``seed + e`` and actions come from the seeded action space.
    An episode ends on ``terminated`` or ``truncated``; only ``terminated`` sets its done.
    """
    env = _make_gymnasium(env_id, max_episode_steps)
    env.action_space.seed(seed)
    writer = EpisodeWriter(out_dir, env_id, seed, episodes_per_file)
    try:
        for ep in progress(range(num_episodes), desc=f"collect {env_id}", unit="ep"):
            env.reset(seed=seed + ep)
            frames, actions, rewards, dones = [], [], [], []
            while True:
                frame = env.render()
                if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[-1] != 3:
                    raise RuntimeError(f"{env_id}: render() returned {getattr(frame, 'shape', type(frame).__name__)}, "
                                       "not an (H, W, 3) image; pick an env that renders rgb_array frames")
                a = env.action_space.sample()
                frames.append(frame)
                actions.append(a)
                _, r, terminated, truncated, _ = env.step(a)
                rewards.append(float(r))
                dones.append(bool(terminated))
                if terminated or truncated:
                    break
            writer.add(frames, actions, rewards, dones)
        writer.flush()
    finally:
        env.close()
    log.info("wrote %d episodes (%d frames) of %s to %d files in %s",
             writer.episodes, writer.frames, env_id, len(writer.files), out_dir)
    return writer.files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True,
                   help="a Procgen game (coinrun, ...) or a Gymnasium env id with rgb_array rendering")
    p.add_argument("--out", default="data", help="output directory (default: data)")
    p.add_argument("--episodes", type=int, default=100, help="episodes to record (default: 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_episode_steps", type=int, default=None,
                   help="cut episodes at this many frames (default: the env's own limit)")
    p.add_argument("--episodes_per_file", type=int, default=10)
    p.add_argument("--distribution_mode", default="hard", help="Procgen difficulty (default: hard)")
    p.add_argument("--action_repeat", type=int, default=1,
                   help="Procgen: hold each random action for 1..N steps (default: 1, a new action every step)")


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.max_episode_steps is not None and args.max_episode_steps < 1:
        raise ValueError(f"--max_episode_steps must be >= 1, got {args.max_episode_steps}")
    if args.env in PROCGEN_GAMES:
        collect_procgen(args.out, args.env, args.episodes, args.distribution_mode, args.seed,
                        args.max_episode_steps, args.episodes_per_file, args.action_repeat)
    else:
        collect_gymnasium(args.out, args.env, args.episodes, args.seed, args.max_episode_steps,
                          args.episodes_per_file)
    return 0
