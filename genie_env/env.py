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
import torch.nn.functional as F
from gymnasium import spaces

from genie_env.checkpoint import load_model
from genie_env.device import resolve_device
from genie_env.world import World

ASSETS = Path(__file__).resolve().parent / "assets" / "coinrun"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def bundled_paths() -> dict[str, Path]:
    """The checkpoints and prompt frames of the bundled CoinRun world model."""
    return {"tokenizer": ASSETS / "tokenizer.pt", "lam": ASSETS / "lam.pt",
            "dynamics": ASSETS / "dynamics.pt", "prompts": ASSETS / "prompts"}


def load_world(tokenizer_path=None, dynamics_path=None, device="cpu"):
    """(tokenizer, dynamics) from checkpoints, the bundled model for any path left None."""
    b = bundled_paths()
    tok = load_model(tokenizer_path or b["tokenizer"], kind="tokenizer", device=device)
    dyn = load_model(dynamics_path or b["dynamics"], kind="dynamics", device=device)
    return tok, dyn


def make_world(tokenizer_path, dynamics_path, prompt, device, batch_size: int,
               maskgit_steps: int | None, temperature: float | None, dtype="float32", compile: bool | str = False):
    """(device, World, prompt frames) for an env: bundled model and prompts where left None."""
    dev = resolve_device(device)
    tok, dyn = load_world(tokenizer_path, dynamics_path, dev)
    world = World(tok, dyn, batch_size, dev, maskgit_steps, temperature, dtype, compile)
    prompts = load_prompts(prompt if prompt is not None else bundled_paths()["prompts"], world.image_size)
    return dev, world, prompts


def add_world_arguments(p) -> None:
    """The command-line options that pick and tune a world, shared by ``generate`` and ``play``."""
    p.add_argument("--tokenizer_path", default=None, help="default: the bundled CoinRun tokenizer")
    p.add_argument("--dynamics_path", default=None, help="default: the bundled CoinRun dynamics model")
    p.add_argument("--prompt", default=None, help="an image, an H5 file or a folder of them (default: bundled)")
    p.add_argument("--device", default="auto")
    p.add_argument("--maskgit_steps", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--temperature", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16 (faster in batches, less exact)")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the per-frame steps (slow first steps); MODE e.g. reduce-overhead")


def _as_frames(x: np.ndarray, where: str) -> np.ndarray:
    """Any image or stack of images -> (P, H, W, 3) uint8."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"{where}: a prompt must be an image (H, W, C) or a stack (P, H, W, C); "
                         f"got shape {x.shape}")
    if x.shape[-1] not in (1, 3, 4) and x.shape[1] in (1, 3, 4):
        x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{where}: a prompt needs 1, 3 or 4 channels, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ValueError(f"{where}: the prompt holds NaN or inf")
        x = (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
    x = x.astype(np.uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x[..., :3]


def _read_prompt_source(prompt, where: str) -> np.ndarray:
    if isinstance(prompt, torch.Tensor):
        return _as_frames(prompt.detach().cpu().numpy(), where)
    if isinstance(prompt, np.ndarray):
        return _as_frames(prompt, where)
    path = Path(prompt)
    if not path.exists():
        raise ValueError(f"{path}: prompt not found; give an image, a folder of images, an H5 file or an array")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            return np.concatenate([_read_prompt_source(p, str(p)) for p in images])
        h5 = sorted(p for p in path.iterdir() if p.suffix in (".h5", ".hdf5"))
        if not h5:
            raise ValueError(f"{path}: no images or H5 files to draw prompts from")
        return np.concatenate([_read_prompt_source(p, str(p)) for p in h5])
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        from genie_env.data.h5 import H5Episodes
        meta = H5Episodes.open(path)
        with h5py.File(path, "r") as f:
            # Each episode's first frame: where a player would start.
            return np.concatenate([meta.read(f, a, a + 1)["frames"] for a, _ in meta.episodes])
    from PIL import Image
    try:
        with Image.open(path) as im:
            return _as_frames(np.asarray(im.convert("RGB")), str(path))
    except OSError as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def load_prompts(prompt, image_size: tuple[int, int], where: str = "prompt") -> torch.Tensor:
    """Prompt frames (P, 3, H, W) in [0, 1] at ``image_size`` from an image path, a folder of images
    or H5 files, an H5 file (each episode's first frame), or an array/tensor (H, W, C) / (P, H, W, C).

    A frame of another size is resized when its aspect ratio is within 5% of the model's; any
    other shape is an error that names the size needed.
    """
    frames = _read_prompt_source(prompt, where)
    h, w = frames.shape[1:3]
    th, tw = image_size
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
    if (h, w) != (th, tw):
        if abs((w / h) / (tw / th) - 1) > 0.05:
            raise ValueError(f"{where}: prompt frames are {h}x{w} but the model needs {th}x{tw}; the aspect "
                             f"ratio differs too much to resize safely. Crop the image to {tw}:{th} first.")
        x = F.interpolate(x, size=(th, tw), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return x


def frames_to_obs(frames: torch.Tensor) -> np.ndarray:
    """(k, 3, H, W) in [0, 1] -> (k, H, W, 3) uint8, a fresh array."""
    return (frames.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


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
                 lam_path: str | Path | None = None, prompt: Any = None, device: str = "auto",
                 maskgit_steps: int | None = None, temperature: float | None = None,
                 max_episode_steps: int | None = None, render_mode: str | None = None,
                 reward_fn: Callable[[np.ndarray, int, np.ndarray], float] | None = None,
                 dtype: str = "float32", compile: bool | str = False):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.device, self.world, self.prompts = make_world(tokenizer_path, dynamics_path, prompt, device, 1,
                                                           maskgit_steps, temperature, dtype, compile)
        self.lam_path = lam_path  # the LAM is not needed to step; kept for tools that label prompts
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
        info = {"tokens": out.tokens[0].cpu().numpy().copy(), "context_length": int(self.world.context_length[0])}
        terminated = False
        reward = 0.0
        if out.reward is not None:
            info["learned_reward"] = float(out.reward[0])
            info["done_prob"] = float(out.done_prob[0])
            reward = info["learned_reward"]
            terminated = info["done_prob"] > 0.5
        if self.reward_fn is not None:
            reward = float(self.reward_fn(prev, action, self._obs))
        truncated = self.max_episode_steps is not None and self._steps >= self.max_episode_steps
        if self.render_mode == "human":
            self.render()
        return self._obs.copy(), reward, terminated, truncated, info

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
