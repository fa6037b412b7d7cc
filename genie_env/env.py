"""``Genie-v0``: a learned world as a Gymnasium environment.

The world is a Genie tokenizer + dynamics model (by default the small CoinRun model that ships
inside the package). An episode starts from a prompt frame; each ``step(a)`` decodes the next
frame under latent action ``a`` with one MaskGIT decode against the temporal KV cache.

Spaces
    action_space: ``Discrete(n)``, the dynamics model's latent actions (8 by default).
    observation_space: ``Box(0, 255, (H, W, 3), uint8)``, the model's resolution (64x64 bundled).

Reward and termination
    ``reward_fn(prev_obs, action, obs) -> float`` when given; otherwise the dynamics model's
    learned reward head when the checkpoint has one; otherwise 0.0. ``terminated`` is the learned
    termination head's probability > 0.5 when there is one, else False. ``truncated`` after
    ``max_episode_steps`` steps (``gym.make`` sets 1000, CoinRun's own time limit).

Speed
    ``dtype`` ('float32' by default, 'bfloat16', or 'float16' on a GPU) is the inference
    precision: bfloat16 steps large batches faster but is less exact (README); ``compile=True`` (or a ``torch.compile`` mode such as
    "reduce-overhead") runs each frame's transformer steps through ``torch.compile`` (seconds to
    compile at the first steps, faster after: see BENCHMARKS.md).

Sampling
    ``maskgit_steps``, ``temperature`` and ``action_guidance`` default to the checkpoint's.
    ``action_guidance=g > 0`` samples from (1 + g) log p(x | action) - g log p(x | mean action):
    the keys move the scene more often, frames are less exact, and a step runs each MaskGIT pass
    on twice the rows (README, "Candidate worlds").

info
    ``tokens`` (the frame's tokens, int64), ``context_length`` (frames in the model's window),
    and ``done_prob`` / ``learned_reward`` when the model has the heads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from genie_env.bundled import make_world
from genie_env.prompts import load_prompts
from genie_env.video import to_uint8
from genie_env.world import check_episode_args, step_outcome


def frames_to_obs(frames: torch.Tensor) -> np.ndarray:
    """(k, 3, H, W) in [0, 1] -> (k, H, W, 3) uint8, a fresh array."""
    return to_uint8(frames).permute(0, 2, 3, 1).cpu().numpy()


def torch_seed(np_random: np.random.Generator) -> int:
    return int(np_random.integers(0, 2**63 - 1))


class HumanRenderer:
    """A scaled pygame window showing the current frame, for ``render_mode="human"``."""

    def __init__(self, size: tuple[int, int], scale: int = 8, fps: int = 10):
        import pygame
        self.pygame, self.scale, self.fps = pygame, scale, fps
        pygame.display.init()  # no audio: a viewer needs none, and headless machines lack it
        self.screen = pygame.display.set_mode((size[1] * scale, size[0] * scale))
        pygame.display.set_caption("Genie-v0")
        self.clock = pygame.time.Clock()

    def show(self, frame: np.ndarray) -> None:
        pg = self.pygame
        pg.event.pump()
        surf = pg.surfarray.make_surface(frame.transpose(1, 0, 2))
        self.screen.blit(pg.transform.scale(surf, self.screen.get_size()), (0, 0))
        pg.display.flip()
        self.clock.tick(self.fps)

    def close(self) -> None:
        self.pygame.display.quit()


class GenieEnv(gym.Env):
    """A Genie world model stepped as a Gymnasium environment (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 10}

    def __init__(self, tokenizer_path: str | Path | None = None, dynamics_path: str | Path | None = None,
                 prompt: Any = None, device: str = "auto",
                 maskgit_steps: int | None = None, temperature: float | None = None,
                 max_episode_steps: int | None = None, render_mode: str | None = None,
                 reward_fn: Callable[[np.ndarray, int, np.ndarray], float] | None = None,
                 dtype: str = "float32", compile: bool | str = False, action_guidance: float | None = None):
        check_episode_args(max_episode_steps, render_mode, self.metadata["render_modes"], reward_fn)
        self.render_mode = render_mode
        self.device, self.world, self.prompts = make_world(tokenizer_path, dynamics_path, prompt, device, 1,
                                                           maskgit_steps, temperature, dtype, compile,
                                                           action_guidance)
        self.reward_fn = reward_fn
        self.max_episode_steps = max_episode_steps
        h, w = self.world.image_size
        self.action_space = spaces.Discrete(self.world.num_actions)
        self.observation_space = spaces.Box(0, 255, (h, w, 3), np.uint8)
        self._gen: torch.Generator | None = None
        self._obs: np.ndarray | None = None
        self._steps = 0
        self._renderer: HumanRenderer | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        prompts = self.prompts
        if options.get("prompt") is not None:
            prompts = load_prompts(options["prompt"], self.world.image_size, "options['prompt']")
        index = int(self.np_random.integers(len(prompts)))
        self._gen = torch.Generator(device=self.device).manual_seed(torch_seed(self.np_random))
        frames = self.world.reset(prompts[index:index + 1])
        self._obs = frames_to_obs(frames)[0]
        self._steps = 0
        if self.render_mode == "human":
            self.render()
        return self._obs.copy(), {"tokens": self.world.tokens[0].cpu().numpy().copy(), "prompt_index": index,
                                  "context_length": 1}

    def step(self, action):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action) and not (
                isinstance(action, (int, np.integer)) and 0 <= int(action) < self.action_space.n):
            raise ValueError(f"invalid action {action!r}: Genie-v0 takes an integer in [0, {self.action_space.n})")
        action = int(action)
        prev = self._obs
        out = self.world.step(torch.tensor([action]), generators=[self._gen])
        self._obs = frames_to_obs(out.frames)[0]
        self._steps += 1
        rewards, terminated, truncated, infos = step_outcome(
            out, prev[None], np.array([action]), self._obs[None], np.array([self._steps]),
            self.world.context_length.cpu().numpy(), self.reward_fn, self.max_episode_steps)
        info = {k: v[0].copy() if v.ndim > 1 else v[0].item() for k, v in infos.items()}
        if self.render_mode == "human":
            self.render()
        return self._obs.copy(), float(rewards[0]), bool(terminated[0]), bool(truncated[0]), info

    def render(self):
        if self._obs is None:
            return None
        if self.render_mode == "rgb_array":
            return self._obs.copy()
        if self.render_mode == "human":
            if self._renderer is None:
                self._renderer = HumanRenderer(self.world.image_size, fps=self.metadata["render_fps"])
            self._renderer.show(self._obs)
        return None

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
