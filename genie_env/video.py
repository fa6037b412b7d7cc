"""Writing frames to a video file: mp4 through PyAV (which bundles FFmpeg), GIF through Pillow."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence


def check_pixel_range(pixels: np.ndarray, where: str, tolerance: float = 1e-3) -> None:
    """Float pixels must lie in [0, 1] and be finite: a 0-255 float array (a common layout) would
    otherwise be clipped to white without a word. Raises a ValueError naming ``where``, the range
    found and the fix."""
    if not np.isfinite(pixels).all():
        raise ValueError(f"{where}: float pixels hold NaN or inf; fix or drop those frames")
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < -tolerance or hi > 1 + tolerance:
        hint = (" They look like 0-255 values: divide by 255, or store uint8." if hi <= 255 + tolerance and lo >= 0
                else " Rescale them to [0, 1], or store uint8 0-255.")
        raise ValueError(f"{where}: float pixels must lie in [0, 1], found values in [{lo:g}, {hi:g}].{hint}")


def to_uint8(pixels):
    """Float pixels in [0, 1] (a numpy array or a tensor) -> uint8 0-255, rounded to nearest."""
    if isinstance(pixels, torch.Tensor):
        return (pixels.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)


def resize_frames(frames: torch.Tensor, size) -> torch.Tensor:
    """Frames (N, C, H, W) in [0, 1] resized to ``size`` (h, w): bilinear with antialiasing, so a
    downscale averages instead of skipping pixels; a frame already that size is returned as is."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    return F.interpolate(frames, size=tuple(size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def to_uint8_frames(video) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] (tensor or array) or (T, H, W, 3) uint8 -> (T, H, W, 3) uint8."""
    if isinstance(video, torch.Tensor):
        video = video.detach().float().cpu().numpy()
    video = np.asarray(video)
    if video.dtype != np.uint8:
        video = to_uint8(video)
    if video.ndim == 4 and video.shape[1] == 3 and video.shape[-1] != 3:
        video = video.transpose(0, 2, 3, 1)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3) or (T, 3, H, W), got {video.shape}")
    return np.ascontiguousarray(video)


def side_by_side(*videos: torch.Tensor) -> torch.Tensor:
    """Rows of frames for TensorBoard: each (T, 3, H, W) video becomes one row -> (1, 3, k*H, T*W)."""
    rows = [torch.cat(list(v), dim=-1) for v in videos]
    return torch.cat(rows, dim=-2).unsqueeze(0)


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling: 64x64 frames are too small to watch."""
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def write_grid(path: str | Path, grid: torch.Tensor, scale: int = 2, gap: int = 2) -> Path:
    """Write a PNG of frames ``grid`` (rows, columns, 3, H, W) in [0, 1], each upscaled ``scale``
    times, with ``gap`` white pixels between them. Returns the path written."""
    rows, cols = grid.shape[:2]
    tiles = upscale(to_uint8_frames(grid.flatten(0, 1)), scale)  # (rows * cols, h, w, 3)
    h, w = tiles.shape[1:3]
    img = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        img[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def _pyav():
    # Imported when an mp4 is written or read, so that training (which writes none) runs where
    # PyAV is missing, e.g. a GPU image with its own Python packages.
    try:
        import av
    except ImportError as e:
        raise RuntimeError("writing or reading .mp4 needs PyAV: pip install av (or use a .gif path)") from e
    return av


def write_video(path: str | Path, video, fps: int = 10, scale: int = 4) -> Path:
    """Write ``video`` to ``path``; the suffix picks the format (.mp4 needs ``av``, .gif Pillow).

    Returns the path written.
    """
    path = Path(path)
    frames = upscale(to_uint8_frames(video), scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mp4":
        h, w = frames.shape[1:3]
        # yuv420p needs even sizes.
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        av = _pyav()
        with av.open(str(path), mode="w") as container:
            # x264's macroblock-tree rate control reads memory it never wrote on tiny frames
            # (32x32 here), so the same frames gave different files once a decode had run in
            # the process; without it a seed's video is the same file every time.
            stream = container.add_stream("libx264", rate=fps, options={"x264-params": "mbtree=0"})
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path
    if path.suffix.lower() != ".gif":
        raise ValueError(f"{path}: unsupported video format; use .mp4 or .gif")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def read_video(path: str | Path) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of an mp4 (PyAV) or gif (Pillow): for tests and tools."""
    path = Path(path)
    if path.suffix.lower() == ".mp4":
        with _pyav().open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
