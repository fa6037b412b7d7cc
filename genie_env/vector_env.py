"""A native batched ``Genie-v0`` vector env: N worlds in one batched forward per MaskGIT pass.

``gym.make_vec("Genie-v0", num_envs=N)`` builds it (the spec's ``vector_entry_point``). Env i
seeded with s behaves exactly as a single ``GenieEnv`` reset with seed s: the same prompt draw,
the same torch generator, the same frames; ``reset(seed=s)`` seeds env i with s + i, as
Gymnasium's own vector envs do. Auto-reset follows ``autoreset_mode`` (Gymnasium 1.x):
NEXT_STEP (default: the step after an episode ends resets that env and ignores its action) or
SAME_STEP (the env resets at once; the final frame is in ``infos["final_obs"]``).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from genie_env.bundled import make_world
from genie_env.env import frames_to_obs, torch_seed
from genie_env.prompts import load_prompts
from genie_env.world import check_episode_args, check_world_args, step_outcome


class GenieVectorEnv(VectorEnv):
    """``num_envs`` Genie worlds stepped together; arguments as :class:`GenieEnv`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, tokenizer_path=None, dynamics_path=None,
                 prompt: Any = None, device: str = "auto", maskgit_steps: int | None = None,
                 temperature: float | None = None, max_episode_steps: int | None = None,
                 render_mode: str | None = None,
                 reward_fn: Callable[[np.ndarray, int, np.ndarray], float] | None = None,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 dtype: str = "float32", compile: bool | str = False, action_guidance: float | None = None):
        check_world_args(None, None, num_envs)
        check_episode_args(max_episode_steps, render_mode, self.metadata["render_modes"], reward_fn)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.device, self.world, self.prompts = make_world(tokenizer_path, dynamics_path, prompt, device,
                                                           num_envs, maskgit_steps, temperature, dtype, compile,
                                                           action_guidance)
        self.reward_fn = reward_fn
        self.max_episode_steps = max_episode_steps
        h, w = self.world.image_size
        self.single_action_space = spaces.Discrete(self.world.num_actions)
        self.single_observation_space = spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._np_randoms = [seeding.np_random(None)[0] for _ in range(num_envs)]
        self._gens: list[torch.Generator | None] = [None] * num_envs
        self._obs = np.zeros((num_envs, h, w, 3), np.uint8)
        self._steps = np.zeros(num_envs, np.int64)
        self._needs_reset = np.zeros(num_envs, bool)
        self._started = False

    def _reset_rows(self, rows: np.ndarray, seeds: list[int | None], prompts) -> np.ndarray:
        """Reset ``rows`` exactly as GenieEnv.reset does for one env; returns the prompt indices.

        ``prompts``: one pool (P, 3, H, W) for all rows, or a list with each env's own pool.
        """
        picks, frames = [], []
        for i, seed in zip(rows, seeds):
            if seed is not None:
                self._np_randoms[i], _ = seeding.np_random(seed)
            rng = self._np_randoms[i]
            pool = prompts[i] if isinstance(prompts, list) else prompts
            picks.append(int(rng.integers(len(pool))))
            frames.append(pool[picks[-1]])
            self._gens[i] = torch.Generator(device=self.device).manual_seed(torch_seed(rng))
        frames = self.world.reset(torch.stack(frames), rows=rows)
        self._obs[rows] = frames_to_obs(frames)
        self._steps[rows] = 0
        self._needs_reset[rows] = False
        return np.array(picks)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        """Reset every env, or those in ``options["reset_mask"]``.

        ``options["prompt"]`` overrides the prompt source for this reset: one source for all envs,
        or a list of ``num_envs`` sources, env i drawing from the i-th.
        """
        options = options or {}
        mask = np.asarray(options.get("reset_mask", np.ones(self.num_envs, bool)), bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
        source = options.get("prompt")
        if source is None:
            prompts = self.prompts
        elif isinstance(source, (list, tuple)) and len(source) == self.num_envs:
            prompts = [load_prompts(p, self.world.image_size, f"options['prompt'][{i}]") for i, p in enumerate(source)]
        else:
            prompts = load_prompts(source, self.world.image_size, "options['prompt']")
        rows = np.flatnonzero(mask)
        picks = self._reset_rows(rows, [seeds[i] for i in rows], prompts)
        self._started = True
        info = {"prompt_index": np.full(self.num_envs, -1), "_prompt_index": mask}
        info["prompt_index"][rows] = picks
        return self._obs.copy(), info

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        n = self.single_action_space.n
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer) or \
                actions.min() < 0 or actions.max() >= n:
            raise ValueError(f"actions must be {self.num_envs} integers in [0, {n}), got {actions!r}")
        rewards = np.zeros(self.num_envs, np.float64)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        infos: dict[str, Any] = {}

        resetting = np.flatnonzero(self._needs_reset)  # NEXT_STEP: last step ended these episodes
        if resetting.size:
            self._reset_rows(resetting, [None] * resetting.size, self.prompts)
        stepping = np.flatnonzero(~np.isin(np.arange(self.num_envs), resetting))
        if stepping.size:
            prev = self._obs[stepping].copy()
            out = self.world.step(torch.as_tensor(actions[stepping]), rows=stepping,
                                  generators=[self._gens[i] for i in stepping])
            self._obs[stepping] = frames_to_obs(out.frames)
            self._steps[stepping] += 1
            r, term, trunc, step_info = step_outcome(
                out, prev, actions[stepping], self._obs[stepping], self._steps[stepping],
                self.world.context_length.cpu().numpy()[stepping], self.reward_fn, self.max_episode_steps)
            rewards[stepping], terminated[stepping], truncated[stepping] = r, term, trunc
            # Gymnasium's vector info layout: key -> (num_envs, ...) values, "_key" -> which envs have one.
            for key, value in step_info.items():
                infos[key] = np.zeros((self.num_envs, *value.shape[1:]), value.dtype)
                infos[key][stepping] = value
                infos[f"_{key}"] = np.isin(np.arange(self.num_envs), stepping)
        # Envs that reset this step show their prompt's tokens.
        infos["tokens"] = self.world.tokens.cpu().numpy().copy()
        infos["_tokens"] = np.ones(self.num_envs, bool)
        ended = terminated | truncated
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._needs_reset = ended
        elif self.autoreset_mode == AutoresetMode.SAME_STEP and ended.any():
            infos["final_obs"] = np.where(ended[:, None, None, None], self._obs, 0).astype(np.uint8)
            infos["_final_obs"] = ended
            self._reset_rows(np.flatnonzero(ended), [None] * int(ended.sum()), self.prompts)
        elif self.autoreset_mode == AutoresetMode.DISABLED:
            self._needs_reset[:] = False
        return self._obs.copy(), rewards, terminated, truncated, infos

    def render(self):
        return self._obs.copy() if self.render_mode == "rgb_array" else None

