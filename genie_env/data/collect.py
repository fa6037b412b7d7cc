"""Record random-policy episodes to H5 files (the format in ``genie_env.data.h5``).

Procgen games (``coinrun`` and the rest) run through procgen's gym3 interface, in hard mode by
default as in the Genie CoinRun study; any other name is a Gymnasium env id rendered with
``rgb_array``. Both record the frame *before* each action, so an episode's terminal frame is not
stored (gym3 resets inside the step and never shows it): the last stored frame of an episode is
the one its final action was taken in. ``dones`` marks real terminations only (a Procgen reset,
or Gymnasium's ``terminated``); an episode cut by ``max_episode_steps`` or a Gymnasium time
limit ends without one, so a learned termination head never learns a cut as a death. Episode
boundaries are always written to ``episode_starts``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

PROCGEN_GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball",
                 "fruitbot", "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot")


class EpisodeWriter:
    """Buffers episodes and writes ``episodes_per_file`` of them per H5 file."""

    def __init__(self, out_dir: str | Path, name: str, seed: int, episodes_per_file: int):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name, self.seed, self.per_file = name.replace("/", "_"), seed, episodes_per_file
        self.buffer: list[dict[str, np.ndarray]] = []
        self.files: list[Path] = []
        self.frames = 0

    def add(self, frames, actions, rewards, dones) -> None:
        ep = {"frames": np.stack(frames).astype(np.uint8), "actions": np.asarray(actions),
              "rewards": np.asarray(rewards, dtype=np.float32), "dones": np.asarray(dones, dtype=bool)}
        self.buffer.append(ep)
        self.frames += len(frames)
        if len(self.buffer) >= self.per_file:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        path = self.out_dir / f"{self.name}_{self.seed}_{len(self.files):04d}.h5"
        lengths = [len(ep["frames"]) for ep in self.buffer]
        tmp = path.with_suffix(".h5.tmp")
        with h5py.File(tmp, "w") as f:
            frames = np.concatenate([ep["frames"] for ep in self.buffer])
            f.create_dataset("frames", data=frames, compression="lzf",
                             chunks=(min(16, len(frames)), *frames.shape[1:]))
            for k in ("actions", "rewards", "dones"):
                f.create_dataset(k, data=np.concatenate([ep[k] for ep in self.buffer]))
            f.create_dataset("episode_starts", data=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
        tmp.replace(path)  # a half-written file never looks like data
        self.files.append(path)
        self.buffer = []


def collect_procgen(out_dir: str | Path, env_name: str = "coinrun", num_episodes: int = 100,
                    distribution_mode: str = "hard", seed: int = 0, max_episode_steps: int | None = None,
                    episodes_per_file: int = 10) -> list[Path]:
    """Record ``num_episodes`` random-policy episodes of a Procgen game; returns the files written."""
    try:
        from procgen import ProcgenGym3Env
    except ImportError as e:
        raise RuntimeError("Procgen is not installed: pip install 'genie-env[procgen]'") from e
    env = ProcgenGym3Env(num=1, env_name=env_name, distribution_mode=distribution_mode, rand_seed=seed)
    rng = np.random.default_rng(seed)
    n_actions = env.ac_space.eltype.n
    writer = EpisodeWriter(out_dir, env_name, seed, episodes_per_file)
    frames, actions, rewards, dones = [], [], [], []
    _, obs, _ = env.observe()
    with tqdm(total=num_episodes, desc=f"collect {env_name}", unit="ep") as bar:
        while len(writer.files) * episodes_per_file + len(writer.buffer) < num_episodes:
            a = int(rng.integers(n_actions))
            frames.append(obs["rgb"][0].copy())
            actions.append(a)
            env.act(np.array([a]))
            rew, obs, first = env.observe()
            rewards.append(float(rew[0]))  # gym3: the reward of the step that just ended
            capped = max_episode_steps is not None and len(frames) >= max_episode_steps
            dones.append(bool(first[0]))
            if first[0] or capped:
                writer.add(frames, actions, rewards, dones)
                frames, actions, rewards, dones = [], [], [], []
                bar.update(1)
                if capped and not first[0]:
                    # Cutting an episode short: start the next one from a fresh level.
                    env = ProcgenGym3Env(num=1, env_name=env_name, distribution_mode=distribution_mode,
                                         rand_seed=int(rng.integers(2**31 - 1)))
                    _, obs, _ = env.observe()
    writer.flush()
    log.info("wrote %d episodes (%d frames) of %s to %d files in %s",
             num_episodes, writer.frames, env_name, len(writer.files), out_dir)
    return writer.files


def collect_gymnasium(out_dir: str | Path, env_id: str, num_episodes: int = 100, seed: int = 0,
                      max_episode_steps: int | None = None, episodes_per_file: int = 10) -> list[Path]:
    """Record random-policy episodes of a Gymnasium env, frames from ``render()``."""
    import gymnasium as gym
    kwargs = {"render_mode": "rgb_array"}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise RuntimeError(f"cannot make Gymnasium env {env_id!r}: {e}") from e
    if "rgb_array" not in env.metadata.get("render_modes", []):
        raise RuntimeError(f"{env_id} cannot render rgb_array frames (it offers "
                           f"{env.metadata.get('render_modes', [])}); pick an env that renders images")
    env.action_space.seed(seed)
    writer = EpisodeWriter(out_dir, env_id, seed, episodes_per_file)
    for ep in tqdm(range(num_episodes), desc=f"collect {env_id}", unit="ep"):
        env.reset(seed=seed + ep)
        frames, actions, rewards, dones = [], [], [], []
        while True:
            frame = env.render()
            if not isinstance(frame, np.ndarray) or frame.ndim != 3:
                raise RuntimeError(f"{env_id}: render() returned {type(frame).__name__}, not an HxWx3 image")
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
    env.close()
    log.info("wrote %d episodes (%d frames) of %s to %d files in %s",
             num_episodes, writer.frames, env_id, len(writer.files), out_dir)
    return writer.files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True,
                   help="a Procgen game (coinrun, ...) or a Gymnasium env id with rgb_array rendering")
    p.add_argument("--out", default="data", help="output directory (default: data)")
    p.add_argument("--episodes", type=int, default=100, help="episodes to record (default: 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_episode_steps", type=int, default=None, help="cut episodes at this length")
    p.add_argument("--episodes_per_file", type=int, default=10)
    p.add_argument("--distribution_mode", default="hard", help="Procgen difficulty (default: hard)")


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.env in PROCGEN_GAMES:
        collect_procgen(args.out, args.env, args.episodes, args.distribution_mode, args.seed,
                        args.max_episode_steps, args.episodes_per_file)
    else:
        collect_gymnasium(args.out, args.env, args.episodes, args.seed, args.max_episode_steps,
                          args.episodes_per_file)
    return 0
