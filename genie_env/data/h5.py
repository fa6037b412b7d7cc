"""H5 video episodes and the clip dataset the trainers read.

Format: one or more ``.h5``/``.hdf5`` files in a directory, each holding

- ``frames`` (or ``images``): ``(T, H, W, C)`` or ``(T, C, H, W)`` with C in {1, 3}, uint8 0-255
  or float 0-1. The channel axis is the last one if it has 1 or 3 entries, else axis 1; a shape
  where both or neither fit is an error. One channel is repeated to RGB.
- optional ``actions`` ``(T,)`` (int: discrete) or ``(T, k)`` (float: continuous), ``rewards``
  ``(T,)`` float, ``dones`` ``(T,)`` bool: entry i describes the transition **out of** frame i
  (the action taken in frame i, the reward for it, whether the episode ended after it).
- optional ``episode_starts``: 1-D int array of the frame indices where episodes begin (0 first,
  strictly increasing, below T). Without it, a new episode begins after each frame whose
  ``done`` is true; without either, the whole file is one episode.

A clip is ``clip_len`` consecutive frames of one episode; it never crosses an episode boundary.
Metadata is checked when a file is opened (cheaply: no frames are read); NaN or inf in float
frames is found when the clip holding it is read.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

from genie_env.video import check_pixel_range, resize_frames, to_uint8

log = logging.getLogger(__name__)

FRAME_KEYS = ("frames", "images")
OPTIONAL_KEYS = ("actions", "rewards", "dones")
FORMAT_HINT = "Expected 'frames' or 'images' of shape (T,H,W,C) or (T,C,H,W) with C = 1 or 3."


class H5DataError(ValueError):
    """An H5 file or data directory that cannot be read as Genie video."""


def open_h5(path: Path, if_missing: str, if_unreadable: str) -> h5py.File:
    """``path`` opened for reading, or an :class:`H5DataError` that says what is wrong and, from the
    caller, how to fix it."""
    if not path.is_file():
        raise H5DataError(f"{path}: file not found. {if_missing}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise H5DataError(f"{path}: not a readable HDF5 file ({e}). {if_unreadable}") from e


def find_h5_files(data_dir: str | Path) -> list[Path]:
    """The sorted ``.h5``/``.hdf5`` files in ``data_dir`` (or ``[data_dir]`` if it is one file).

    Raises :class:`H5DataError` when the directory is missing or holds no H5 files, pointing to
    ``genie-env collect``, which records new episodes.
    """
    d = Path(data_dir)
    if not d.exists():
        raise H5DataError(f"{d}: data directory not found. Record episodes with "
                          f"`genie-env collect --env coinrun --out {d}` or pass another --data_dir.")
    if d.is_file():
        return [d]
    files = sorted(p for p in d.iterdir() if p.suffix in (".h5", ".hdf5") and p.is_file())
    if not files:
        raise H5DataError(f"{d}: no .h5 or .hdf5 files in this directory. Record episodes with "
                          f"`genie-env collect --env coinrun --out {d}`.")
    return files


def _channel_axis(path: Path, key: str, shape: tuple[int, ...]) -> int:
    if len(shape) != 4:
        raise H5DataError(f"{path}: '{key}' has shape {shape} (rank {len(shape)}); {FORMAT_HINT}")
    last, second = shape[3] in (1, 3), shape[1] in (1, 3)
    if last and second:
        raise H5DataError(f"{path}: '{key}' has shape {shape}: both axis 1 and axis 3 could be the "
                          f"channels; store frames with height and width above 3. {FORMAT_HINT}")
    if last:
        return 3
    if second:
        return 1
    raise H5DataError(f"{path}: '{key}' has shape {shape}: no axis of 1 or 3 channels; {FORMAT_HINT}")


def _episode_bounds(path: Path, t: int, starts: np.ndarray | None,
                    dones: np.ndarray | None) -> list[tuple[int, int]]:
    if starts is not None:
        if starts.ndim != 1 or not np.issubdtype(starts.dtype, np.integer):
            raise H5DataError(f"{path}: 'episode_starts' must be a 1-D int array; got shape {starts.shape} "
                              f"of {starts.dtype}.")
        starts = starts.astype(np.int64)
        if len(starts) == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= t:
            raise H5DataError(f"{path}: 'episode_starts' must begin at 0 and increase strictly below "
                              f"{t} (the frame count); got {starts[:10].tolist()}"
                              f"{'...' if len(starts) > 10 else ''}. Fix it or delete the key.")
    elif dones is not None:
        # The transition out of a done frame ends its episode, so the next frame starts one.
        starts = np.concatenate([[0], np.flatnonzero(dones[:-1]) + 1])
    else:
        starts = np.array([0])
    stops = np.concatenate([starts[1:], [t]])
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


@dataclass
class H5Episodes:
    """One file's metadata, read and checked by :meth:`open` without loading its frames."""

    path: Path
    frame_key: str
    num_frames: int
    height: int
    width: int
    channels_last: bool
    is_float: bool
    episodes: list[tuple[int, int]]  # [start, stop) frame ranges
    keys: tuple[str, ...]  # the optional keys present, in OPTIONAL_KEYS order

    @classmethod
    def open(cls, path: str | Path) -> "H5Episodes":
        """Check one file's frame layout and dtype, the optional arrays' shapes and lengths, and
        the episode bounds; read no frames."""
        path = Path(path)
        with open_h5(path, "Check the path or record episodes with `genie-env collect`.",
                     "Re-record it or remove it.") as f:
            key = next((k for k in FRAME_KEYS if k in f), None)
            if key is None:
                raise H5DataError(f"{path}: key 'frames' missing; found {sorted(f.keys())}. {FORMAT_HINT}")
            if not isinstance(f[key], h5py.Dataset):
                raise H5DataError(f"{path}: '{key}' is an HDF5 group, not an array. {FORMAT_HINT}")
            shape, dtype = tuple(f[key].shape), f[key].dtype
            axis = _channel_axis(path, key, shape)
            t = shape[0]
            h, w = (shape[1], shape[2]) if axis == 3 else (shape[2], shape[3])
            if t == 0 or h == 0 or w == 0:
                raise H5DataError(f"{path}: '{key}' has shape {shape}: no frames (empty file). "
                                  "Re-record it or remove it.")
            is_float = np.issubdtype(dtype, np.floating)
            if not (is_float or np.issubdtype(dtype, np.integer)):
                raise H5DataError(f"{path}: '{key}' has dtype {dtype}; store uint8 0-255 or float 0-1.")
            keys = tuple(k for k in OPTIONAL_KEYS if k in f)
            for k in keys:
                kshape = f[k].shape
                ranks = (1, 2) if k == "actions" else (1,)
                if len(kshape) not in ranks:
                    want = f"({t},) or ({t}, k)" if k == "actions" else f"({t},)"
                    raise H5DataError(f"{path}: '{k}' has shape {kshape}; expected {want}.")
                if kshape[0] != t:
                    raise H5DataError(f"{path}: '{k}' has {kshape[0]} entries but there are {t} frames; "
                                      "entry i must describe the transition out of frame i.")
            dones = np.asarray(f["dones"][:], dtype=bool) if "dones" in f else None
            starts = np.asarray(f["episode_starts"][:]) if "episode_starts" in f else None
        return cls(path, key, t, h, w, axis == 3, is_float, _episode_bounds(path, t, starts, dones), keys)

    def read(self, f: h5py.File, start: int, stop: int) -> dict[str, np.ndarray]:
        """Frames [start, stop) as uint8 ``(n, H, W, 3)`` and the optional arrays of that range.

        ``f`` is this file opened with h5py; the caller owns it so that one handle serves many
        reads.
        """
        frames = np.asarray(f[self.frame_key][start:stop])
        if not self.channels_last:
            frames = rearrange(frames, "n c h w -> n h w c")
        if self.is_float:
            try:
                check_pixel_range(frames, f"{self.path}: '{self.frame_key}' frames {start}..{stop - 1}")
            except ValueError as e:
                raise H5DataError(str(e)) from None
            frames = to_uint8(frames)
        elif frames.dtype != np.uint8:
            lo, hi = int(frames.min()), int(frames.max())
            if lo < 0 or hi > 255:
                raise H5DataError(f"{self.path}: '{self.frame_key}' frames {start}..{stop - 1} are integers in "
                                  f"[{lo}, {hi}], outside 0-255; store uint8 0-255 or float 0-1.")
            frames = frames.astype(np.uint8)
        if frames.shape[-1] == 1:
            frames = np.repeat(frames, 3, axis=-1)
        out = {"frames": frames}
        for k in self.keys:
            out[k] = np.asarray(f[k][start:stop])
        return out


class ClipDataset(Dataset):
    """Fixed-length clips from the episodes of a directory (or list) of H5 files.

    Items are dicts: ``frames`` float32 ``(T, 3, H, W)`` in [0, 1] at ``image_size`` (resized
    bilinearly with antialiasing only when the stored size differs), and, when the files have
    them, ``actions`` ``(T,)`` int64 (float32, maybe ``(T, k)``, if continuous), ``rewards`` and
    ``dones`` ``(T,)`` float32. All files must hold the same optional keys.

    The index holds clip starts spaced ``clip_len // 2`` apart within each episode, plus the
    episode's last full clip so that its final frames are seen; half-overlapping clips give
    every frame two contexts without making an epoch ``clip_len`` times longer than the data.
    Episodes shorter than ``clip_len`` are skipped. ``split`` holds out whole episodes, chosen
    by ``seed``: "val" takes about ``val_fraction`` of them (at least one when there are two or
    more), "train" the rest, None all. Files are opened lazily in each process, so DataLoader
    workers each get their own h5py handles.
    """

    def __init__(self, data: str | Path | Sequence[str | Path], clip_len: int = 16,
                 image_size: Sequence[int] = (64, 64), split: str | None = None,
                 val_fraction: float = 0.1, seed: int = 0):
        if split not in (None, "train", "val"):
            raise ValueError(f"split must be None, 'train' or 'val', got {split!r}")
        if clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {clip_len}")
        if isinstance(data, (str, Path)):
            files, source = find_h5_files(data), str(data)
        else:
            files, source = [Path(p) for p in data], f"{len(data)} H5 files"
            if not files:
                raise H5DataError("no H5 files given. Record episodes with `genie-env collect --env coinrun`.")
        self.clip_len = clip_len
        self.image_size = tuple(int(s) for s in image_size)
        self.files = [H5Episodes.open(p) for p in files]
        keysets = {m.keys for m in self.files}
        if len(keysets) > 1:
            desc = "; ".join(f"{m.path.name}: {list(m.keys)}" for m in self.files[:6])
            raise H5DataError(f"{source}: the files disagree on which of {list(OPTIONAL_KEYS)} they hold "
                              f"({desc}); use files recorded the same way.")
        self.keys = keysets.pop()

        episodes = [(i, a, b) for i, m in enumerate(self.files) for a, b in m.episodes]  # (file, start, stop)
        self.total_episodes = len(episodes)
        long_enough = [e for e in episodes if e[2] - e[1] >= clip_len]
        if not long_enough:
            longest = max(b - a for _, a, b in episodes)
            raise H5DataError(f"{source}: no episode has {clip_len} frames (the longest has {longest}); "
                              "lower clip_len (data.clip_len in a config) or record longer episodes.")
        if len(long_enough) < len(episodes):
            log.info("%s: skipping %d of %d episodes shorter than %d frames",
                     source, len(episodes) - len(long_enough), len(episodes), clip_len)
        self.episodes = self._split(long_enough, split, val_fraction, seed)

        stride = max(1, clip_len // 2)
        self.index: list[tuple[int, int]] = []  # (file, clip start)
        for i, a, b in self.episodes:
            starts = list(range(a, b - clip_len + 1, stride))
            if starts[-1] != b - clip_len:
                starts.append(b - clip_len)
            self.index += [(i, s) for s in starts]
        self._handles: dict[int, h5py.File] = {}
        self._pid: int | None = None

    @staticmethod
    def _split(episodes, split, val_fraction, seed):
        if split is None:
            return episodes
        if len(episodes) < 2:
            log.warning("only one episode is long enough to split: train and val both use it")
            return episodes
        order = np.random.default_rng(seed).permutation(len(episodes))
        n_val = min(len(episodes) - 1, max(1, round(val_fraction * len(episodes))))
        chosen = order[:n_val] if split == "val" else order[n_val:]
        return [episodes[j] for j in sorted(chosen.tolist())]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(b - a for _, a, b in self.episodes)

    @property
    def has_actions(self) -> bool:
        return "actions" in self.keys

    @property
    def has_rewards(self) -> bool:
        return "rewards" in self.keys

    def __len__(self) -> int:
        return len(self.index)

    def _handle(self, i: int) -> h5py.File:
        # An h5py handle inherited through fork() is not safe to use; each process opens its own.
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if i not in self._handles:
            self._handles[i] = h5py.File(self.files[i].path, "r")
        return self._handles[i]

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        i, start = self.index[idx]
        raw = self.files[i].read(self._handle(i), start, start + self.clip_len)
        frames = rearrange(torch.from_numpy(raw["frames"]), "t h w c -> t c h w").float().div_(255.0)
        item = {"frames": resize_frames(frames, self.image_size).contiguous()}
        if "actions" in raw:
            a = raw["actions"]
            item["actions"] = torch.from_numpy(a.astype(np.int64 if np.issubdtype(a.dtype, np.integer) else np.float32))
        for k in ("rewards", "dones"):
            if k in raw:
                item[k] = torch.from_numpy(raw[k].astype(np.float32))
        return item

    def __getstate__(self):
        # Spawned workers receive a pickled copy: it must not carry open handles.
        state = self.__dict__.copy()
        state["_handles"], state["_pid"] = {}, None
        return state
