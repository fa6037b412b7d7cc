"""The inference session behind the env: prompt -> tokens -> step(action) -> frame, batched.

A :class:`World` holds B learned worlds at once. Each step is one MaskGIT decode of every row's
next frame against the dynamics model's temporal KV cache, then one decoder pass against the
tokenizer decoder's cache: a step processes only the new frame, so its cost does not grow with
the episode (the caches are ring buffers of ``max_frames - 1`` frames). Rows reset independently
(a vector env's auto-reset), and every random draw of a row comes from its own
``torch.Generator``, so a row's frames do not depend on the rest of the batch.

``dtype`` is the inference precision: the world casts its models' weights (and so its caches)
to it (float32 by default; bfloat16 is faster in large batches, less exact). Frames come back as
float32 whatever the dtype, and MaskGIT samples from float32 probabilities. ``compile`` (True,
or a ``torch.compile`` mode such as "reduce-overhead", which uses CUDA graphs on a GPU) runs the
per-frame transformer steps (dynamics and decoder) through ``torch.compile``; the first steps
then take seconds to compile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from genie_env.config import ConfigError, check_action_guidance
from genie_env.device import resolve_dtype
from genie_env.models import DynamicsModel, VideoTokenizer


@dataclass
class StepResult:
    frames: torch.Tensor  # (k, 3, H, W) in [0, 1]
    tokens: torch.Tensor  # (k, N) int64
    reward: torch.Tensor | None  # (k,) from the learned head, when the model has one
    done_prob: torch.Tensor | None  # (k,) likewise


def check_world_args(maskgit_steps, temperature, batch_size: int = 1, action_guidance=None) -> None:
    """Refuse sampler settings no world can use, saying what is allowed (None: the checkpoint's)."""
    if maskgit_steps is not None and (isinstance(maskgit_steps, bool) or not isinstance(maskgit_steps, (int, np.integer))
                                      or maskgit_steps < 1):
        raise ValueError(f"maskgit_steps must be an integer >= 1 (or None for the checkpoint's), got {maskgit_steps!r}")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not math.isfinite(temperature) or temperature < 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy; or None for the checkpoint's), "
                         f"got {temperature!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"the number of worlds must be an integer >= 1, got {batch_size!r}")
    if action_guidance is not None:
        try:
            check_action_guidance(action_guidance)
        except ConfigError as e:  # a plain ValueError, worded for the argument rather than a config key
            raise ValueError(f"{e} (or None for the checkpoint's)") from None


def check_episode_args(max_episode_steps, render_mode, render_modes, reward_fn) -> None:
    """The checks both Gymnasium faces make of their own arguments."""
    if max_episode_steps is not None and (isinstance(max_episode_steps, bool)
                                          or not isinstance(max_episode_steps, (int, np.integer))
                                          or max_episode_steps < 1):
        raise ValueError(f"max_episode_steps must be an integer >= 1 or None, got {max_episode_steps!r}")
    if render_mode is not None and render_mode not in render_modes:
        raise ValueError(f"render_mode must be one of {list(render_modes)} or None, got {render_mode!r}")
    if reward_fn is not None and not callable(reward_fn):
        raise ValueError(f"reward_fn must be a function (prev_obs, action, obs) -> float, got {reward_fn!r}")


def step_outcome(out: StepResult, prev_obs: np.ndarray, actions: np.ndarray, obs: np.ndarray,
                 steps: np.ndarray, context_length: np.ndarray,
                 reward_fn: Callable[[np.ndarray, int, np.ndarray], float] | None = None,
                 max_episode_steps: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Reward, termination, truncation and info of k stepped rows: the one rule that both the
    single env and the vector env follow (DIAMOND makes them in one place too).

    - reward: ``reward_fn(prev_obs, action, obs)`` when given; else the learned reward head's
      prediction when the model has one; else 0.0.
    - terminated: the learned termination probability > 0.5, when the model has the head.
    - truncated: ``steps >= max_episode_steps``.
    - info: ``tokens`` (k, N), ``context_length`` (k,), and with the heads ``learned_reward`` and
      ``done_prob`` (k,).
    """
    k = len(actions)
    info: dict[str, np.ndarray] = {"tokens": out.tokens.cpu().numpy(),
                                   "context_length": np.asarray(context_length, np.int64)}
    rewards = np.zeros(k, np.float64)
    terminated = np.zeros(k, bool)
    if out.reward is not None:
        info["learned_reward"] = out.reward.float().cpu().numpy().astype(np.float64)
        info["done_prob"] = out.done_prob.float().cpu().numpy().astype(np.float64)
        rewards = info["learned_reward"].copy()
        terminated = info["done_prob"] > 0.5
    if reward_fn is not None:
        rewards = np.array([float(reward_fn(p, int(a), o)) for p, a, o in zip(prev_obs, actions, obs)], np.float64)
    truncated = np.zeros(k, bool) if max_episode_steps is None else np.asarray(steps) >= max_episode_steps
    return rewards, terminated, truncated, info


def pair_problems(tokenizer_cfg, dynamics_cfg) -> list[str]:
    """Why a tokenizer and a dynamics model (by their configs) cannot work together; [] if they can."""
    t, d = tokenizer_cfg, dynamics_cfg
    problems = []
    if t.num_codes != d.vocab_size:
        problems.append(f"the tokenizer has {t.num_codes} codes but the dynamics vocab_size is {d.vocab_size}")
    if tuple(t.token_grid) != tuple(d.token_grid):
        problems.append(f"the tokenizer makes a {tuple(t.token_grid)} token grid but the dynamics token_grid "
                        f"is {tuple(d.token_grid)}")
    patch_pixels = t.patch_size ** 2 * t.in_channels
    if d.token_pixels and d.token_pixels != patch_pixels:
        problems.append(f"the dynamics token_pixels is {d.token_pixels} but the tokenizer's patches hold "
                        f"{patch_pixels} values ({t.patch_size}x{t.patch_size}x{t.in_channels})")
    return problems


def check_pair(tokenizer: VideoTokenizer, dynamics: DynamicsModel, where: str = "") -> None:
    """A tokenizer and dynamics model that cannot work together raise a ValueError saying why."""
    problems = pair_problems(tokenizer.cfg, dynamics.cfg)
    if problems:
        raise ValueError(f"{where}the tokenizer does not match the dynamics model: {'; '.join(problems)}; "
                         f"pass the tokenizer the dynamics model was trained with")


class World:
    """B worlds stepped in one batched forward per MaskGIT pass."""

    def __init__(self, tokenizer: VideoTokenizer, dynamics: DynamicsModel, batch_size: int = 1,
                 device: torch.device | str = "cpu", maskgit_steps: int | None = None,
                 temperature: float | None = None, dtype: str | torch.dtype | None = "float32",
                 compile: bool | str = False, action_guidance: float | None = None):
        check_pair(tokenizer, dynamics)
        check_world_args(maskgit_steps, temperature, batch_size, action_guidance)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        # The world owns its models: they are moved and cast in place.
        self.tokenizer = tokenizer.to(self.device, self.dtype).eval()
        self.dynamics = dynamics.to(self.device, self.dtype).eval()
        mode = compile if isinstance(compile, str) else None
        self.dynamics.transformer.compile_step(bool(compile), mode=mode)
        self.tokenizer.decoder.compile_step(bool(compile), mode=mode)
        self.batch_size = batch_size
        self.maskgit_steps = dynamics.cfg.maskgit_steps if maskgit_steps is None else int(maskgit_steps)
        self.temperature = dynamics.cfg.temperature if temperature is None else temperature
        self.action_guidance = dynamics.cfg.action_guidance if action_guidance is None else float(action_guidance)
        self.num_actions = dynamics.cfg.num_actions
        self.image_size = tuple(tokenizer.cfg.image_size)
        self.has_reward_head = dynamics.cfg.reward_head
        n, d = dynamics.num_tokens, dynamics.cfg.d_model
        self.dyn_cache = dynamics.new_cache(batch_size, self.device)
        self.dec_cache = tokenizer.decoder.new_cache(batch_size, self.device)
        self.hidden = torch.zeros(batch_size, n, d, device=self.device, dtype=self.dtype)
        self.tokens = torch.zeros(batch_size, n, dtype=torch.long, device=self.device)

    def _rows(self, rows) -> torch.Tensor:
        if rows is None:
            return torch.arange(self.batch_size, device=self.device)
        return torch.as_tensor(rows, dtype=torch.long, device=self.device).reshape(-1)

    def reset(self, prompts: torch.Tensor, rows=None) -> torch.Tensor:
        """Start ``rows`` (all when None) from prompt frames (k, 3, H, W) in [0, 1].

        Returns the frames as the world model sees them (the prompt through the tokenizer).
        """
        # The work runs in inference mode, cheaper per op than no_grad; the results are copied
        # out of it so that callers may modify them in place.
        return self._reset(prompts, rows).clone()

    def step(self, actions: torch.Tensor, rows=None, generators=None) -> StepResult:
        """Advance ``rows`` (all when None) by one frame under ``actions`` (k,) int64.

        ``generators``: one ``torch.Generator`` per stepped row (on this world's device), or None
        for the global RNG. Actions and rows are best given on the CPU: they are checked there,
        and device tensors would first wait for the device.
        """
        out = self._step(actions, rows, generators)
        return StepResult(*(None if t is None else t.clone() for t in
                            (out.frames, out.tokens, out.reward, out.done_prob)))

    @torch.inference_mode()
    def _reset(self, prompts: torch.Tensor, rows) -> torch.Tensor:
        rows = self._rows(rows)
        if prompts.shape[0] != rows.numel() or tuple(prompts.shape[1:]) != (3, *self.image_size):
            raise ValueError(f"expected {rows.numel()} prompt frames of shape (3, {self.image_size[0]}, "
                             f"{self.image_size[1]}), got {tuple(prompts.shape)}")
        tokens = self.tokenizer.encode(prompts.to(self.device)[:, None])[:, 0]
        dyn, dec = self.dyn_cache.subset(rows), self.dec_cache.subset(rows)
        dyn.reset()
        dec.reset()
        self.hidden[rows] = self.dynamics.observe(dyn, tokens, None)
        frames = self.tokenizer.decode_step(tokens, dec)
        self.dyn_cache.assign(rows, dyn)
        self.dec_cache.assign(rows, dec)
        self.tokens[rows] = tokens
        return frames

    @torch.inference_mode()
    def _step(self, actions: torch.Tensor, rows, generators) -> StepResult:
        # Checked on the host: a check on the device would wait for the previous step.
        actions = torch.as_tensor(actions, dtype=torch.long).reshape(-1)
        host = actions.cpu()
        if host.numel() and (host.min() < 0 or host.max() >= self.num_actions):
            raise ValueError(f"actions must lie in [0, {self.num_actions}), got {host.tolist()}")
        actions = actions.to(self.device, non_blocking=True)
        if rows is not None:
            rows = torch.as_tensor(rows, dtype=torch.long).cpu().reshape(-1)
        full = rows is None or torch.equal(rows, torch.arange(self.batch_size))
        rows = self._rows(None if full else rows)
        dyn = self.dyn_cache if full else self.dyn_cache.subset(rows)
        dec = self.dec_cache if full else self.dec_cache.subset(rows)
        reward = done = None
        if self.has_reward_head:
            reward, done = self.dynamics.predict_reward_done(self.hidden[rows], actions)
        tokens = self.dynamics.sample_next(dyn, actions, self.maskgit_steps, self.temperature, generators,
                                           self.action_guidance)
        self.hidden[rows] = self.dynamics.observe(dyn, tokens, actions)
        frames = self.tokenizer.decode_step(tokens, dec)
        if not full:
            self.dyn_cache.assign(rows, dyn)
            self.dec_cache.assign(rows, dec)
        self.tokens[rows] = tokens
        return StepResult(frames, tokens, reward, done)

    @property
    def context_length(self) -> torch.Tensor:
        """Frames in each row's dynamics context window, (B,)."""
        return self.dyn_cache.length
