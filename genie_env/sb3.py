"""Stable-Baselines3 on the batched Genie vector env.

SB3 steps its own ``VecEnv`` type, not a Gymnasium ``VectorEnv``, so this adapter presents
:class:`~genie_env.vector_env.GenieVectorEnv` (one batched forward for all envs) as one::

    from stable_baselines3 import PPO
    from genie_env.sb3 import GenieSB3VecEnv
    model = PPO("CnnPolicy", GenieSB3VecEnv(num_envs=16, max_episode_steps=200), n_steps=64)
    model.learn(10_000)

A single ``gym.make("Genie-v0")`` also works with SB3 directly (SB3 wraps it in its
``DummyVecEnv``), but steps the envs one at a time. Needs ``pip install stable-baselines3``.
"""
from __future__ import annotations

import numpy as np
from gymnasium.vector import AutoresetMode

try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv
except ImportError as e:  # pragma: no cover - exercised only without the optional package
    raise ImportError("genie_env.sb3 needs Stable-Baselines3: pip install stable-baselines3") from e

from genie_env.vector_env import GenieVectorEnv


class GenieSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` over a same-step auto-resetting :class:`GenieVectorEnv`; keyword
    arguments are those of ``gym.make_vec("Genie-v0", ...)``."""

    def __init__(self, num_envs: int = 1, **kwargs):
        kwargs["autoreset_mode"] = AutoresetMode.SAME_STEP  # SB3 expects the reset frame back at once
        self.venv = GenieVectorEnv(num_envs=num_envs, **kwargs)
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self._actions: np.ndarray | None = None
        self._seed: int | None = None

    def reset(self) -> np.ndarray:
        obs, _ = self.venv.reset(seed=self._seed)
        self._seed = None
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64)

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        infos = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, rewards.astype(np.float32), dones, infos

    def seed(self, seed: int | None = None):
        self._seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def close(self) -> None:
        self.venv.close()

    def render(self, mode: str | None = None):
        return self.venv._obs.copy()

    def get_images(self):
        return list(self.venv._obs.copy())

    def get_attr(self, attr_name, indices=None):
        return [getattr(self.venv, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        raise NotImplementedError("the Genie envs share one batched world; call methods on .venv instead")

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._get_indices(indices))
