"""Prompt frames for a world: images, folders of images, H5 episodes or arrays, at the model's size."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from genie_env.data.h5 import H5Episodes
from genie_env.data.probes import is_key_probes, load_key_probes
from genie_env.video import check_pixel_range, resize_frames, to_uint8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


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
        check_pixel_range(x, f"{where} (a float prompt)")
        x = to_uint8(x)
    elif x.dtype != np.uint8 and (x.min() < 0 or x.max() > 255):
        raise ValueError(f"{where}: an integer prompt must hold 0-255, found [{x.min()}, {x.max()}]")
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
        if is_key_probes(path):
            return _as_frames(load_key_probes(path)["prompts"], str(path))
        meta = H5Episodes.open(path)
        with h5py.File(path, "r") as f:
            # Each episode's first frame: where a player would start.
            return np.concatenate([meta.read(f, a, a + 1)["frames"] for a, _ in meta.episodes])
    try:
        with Image.open(path) as im:
            return _as_frames(np.asarray(im.convert("RGB")), str(path))
    except OSError as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def load_prompts(prompt, image_size: tuple[int, int], where: str = "prompt") -> torch.Tensor:
    """Prompt frames (P, 3, H, W) in [0, 1] at ``image_size`` from an image path, a folder of images
    or H5 files, an H5 file (each episode's first frame, or a key probes file's prompts), or an
    array/tensor (H, W, C) / (P, H, W, C).

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
        x = resize_frames(x, (th, tw))
    return x


