"""Quantisers: one module for the tokenizer's codes and the LAM's 8 actions, FSQ, and fixed pixel codes.

All map vectors (..., dim) to integer codes and back with the same interface (``forward``,
``nearest``, ``lookup``, ``num_codes``, ``dim``), so a model can switch between them by config.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def code_stats(indices: torch.Tensor, num_codes: int, counts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Perplexity (exp of the entropy of code use) and usage (fraction of codes used) of ``indices``."""
    if counts is None:
        counts = torch.bincount(indices.flatten(), minlength=num_codes).float()
    probs = counts / counts.sum().clamp(min=1)
    perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())
    return {"perplexity": perplexity, "usage": (counts > 0).float().mean()}


def _fp32(x: torch.Tensor):
    """A context in which matmuls on x's device stay float32: bf16 autocast would round the
    distances and pick another code for about half the patches (measured on CoinRun)."""
    return torch.autocast(x.device.type, enabled=False)


def _sq_dist(x: torch.Tensor, c: torch.Tensor, spherical: bool) -> torch.Tensor:
    """Squared distances (N, K) between rows of x (N, D) and c (K, D); unit vectors when spherical."""
    with _fp32(x):
        x, c = x.float(), c.float()
        if spherical:
            return (2 - 2 * x @ c.t()).clamp(min=0)
        return torch.cdist(x, c).square()


def spread_picks(x: torch.Tensor, n: int, centres: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, spherical: bool = True) -> torch.Tensor:
    """Indices of ``n`` rows of x (N, D), each drawn with probability proportional to its
    squared distance from ``centres`` and the rows already drawn (k-means++ seeding): new codes
    land where no code is yet, and spread out instead of piling onto one spot. ``spherical``:
    the rows are unit vectors (the VQ codebook's space); otherwise plain Euclidean vectors."""
    if centres is None or centres.shape[0] == 0:
        first = torch.randint(0, x.shape[0], (1,), generator=generator, device=x.device)
        picks, d2 = [first], _sq_dist(x, x[first], spherical).squeeze(1)
    else:
        picks, d2 = [], _sq_dist(x, centres, spherical).min(dim=1).values
    while len(picks) < n:
        pick = torch.multinomial(d2 + 1e-12, 1, generator=generator)
        picks.append(pick)
        d2 = torch.minimum(d2, _sq_dist(x, x[pick], spherical).squeeze(1))
    return torch.cat(picks)


def kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None,
           spherical: bool = True) -> torch.Tensor:
    """k centroids of x (N, D) by k-means (Lloyd's iterations), seeded by k-means++ (N >= k).
    ``spherical``: x holds unit vectors and so do the centroids (cosine k-means)."""
    c = x[spread_picks(x, k, generator=generator, spherical=spherical)]
    for _ in range(iters):
        assign = assign_nearest(x, c, spherical)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)[:, None]
        means = F.normalize(sums, dim=-1) if spherical else sums / counts.clamp(min=1)
        c = torch.where(counts > 0, means, c)
    return c


def assign_nearest(x: torch.Tensor, c: torch.Tensor, spherical: bool = True) -> torch.Tensor:
    """Index of the nearest row of c for each row of x."""
    return _sq_dist(x, c, spherical).argmin(dim=1)


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser on L2-normalised vectors with a straight-through gradient.

    Loss: ||sg(z) - e||^2 + commitment * ||z - sg(e)||^2 (van den Oord et al., 2017), on unit
    vectors so the codebook cannot drift in scale. Two guards against collapse:

    - ``kmeans_init``: the first training batch's vectors seed the codebook by spherical k-means,
      so every code starts where the encoder's outputs are (random unit codes mostly start far
      from them and never win a vector).
    - Codes unused for ``dead_code_steps`` training steps (0 disables) are re-seeded with batch
      vectors drawn in proportion to their squared distance from the live codes (k-means++), so
      they take new ground instead of landing on a live code and dying again. :meth:`restore_reseeded` (called by the trainer after
      its optimizer step) puts them back where they were re-seeded and clears their Adam moments,
      which would otherwise carry the dead code's stale momentum.

    Under torch.distributed the usage counts are summed and the new codes broadcast from rank 0,
    so every replica keeps the same codebook.
    """

    def __init__(self, num_codes: int, dim: int, commitment: float = 0.25, dead_code_steps: int = 100,
                 kmeans_init: bool = True):
        super().__init__()
        self.num_codes, self.dim = num_codes, dim
        self.commitment, self.dead_code_steps = commitment, dead_code_steps
        self.codebook = nn.Parameter(F.normalize(torch.randn(num_codes, dim), dim=-1))
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.reseeded: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, vectors) of the last re-seed

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before k-means init existed hold a trained codebook.
        state_dict.setdefault(prefix + "initialized", torch.tensor(True))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def codes(self) -> torch.Tensor:
        """The unit-norm codebook, (num_codes, dim)."""
        return F.normalize(self.codebook, dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for integer ``indices`` of any shape -> (..., dim)."""
        return self.codes()[indices]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each vector of z (..., dim)."""
        with _fp32(z):
            z = F.normalize(z.float(), dim=-1)
            return (z @ self.codes().float().t()).argmax(dim=-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z (..., dim) -> (quantised z with straight-through grad, indices (...), stats).

        stats: ``loss`` (codebook + commitment), ``perplexity`` and ``usage`` (fraction of codes
        used in this batch).
        """
        z = F.normalize(z.float(), dim=-1)
        if self.training and not bool(self.initialized):
            self._kmeans_init(z.detach().reshape(-1, self.dim))
        codes = self.codes().float()
        with _fp32(z):
            indices = (z @ codes.t()).argmax(dim=-1)
        e = codes[indices]
        loss = F.mse_loss(e, z.detach()) + self.commitment * F.mse_loss(z, e.detach())
        z_q = z + (e - z).detach()

        counts = torch.bincount(indices.flatten(), minlength=self.num_codes).float()
        if self.training:
            if _distributed():
                dist.all_reduce(counts)
            self._reset_dead_codes(counts, z.detach().reshape(-1, self.dim), codes)
        return z_q, indices, {"loss": loss, **code_stats(indices, self.num_codes, counts)}

    @torch.no_grad()
    def _kmeans_init(self, batch: torch.Tensor) -> None:
        if batch.shape[0] >= self.num_codes:
            new = kmeans(batch, self.num_codes).to(self.codebook.dtype)
            if _distributed():
                dist.broadcast(new, src=0)
            self.codebook.data.copy_(new)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _reset_dead_codes(self, counts: torch.Tensor, batch: torch.Tensor, codes: torch.Tensor) -> None:
        self.reseeded = None
        self.steps_unused += 1
        self.steps_unused[counts > 0] = 0
        if self.dead_code_steps <= 0:
            return
        dead = self.steps_unused >= self.dead_code_steps
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        pick = spread_picks(batch, n_dead, codes[~dead])
        new = batch[pick].to(self.codebook.dtype)
        if _distributed():
            dist.broadcast(new, src=0)
        self.codebook.data[dead] = new
        self.steps_unused[dead] = 0
        self.reseeded = (dead, new)

    @torch.no_grad()
    def restore_reseeded(self, optimizer: torch.optim.Optimizer) -> None:
        """After an optimizer step: put the codes re-seeded in this step's forward back to their
        new vectors and zero their rows of the optimizer's moments (Adam's ``exp_avg``,
        ``exp_avg_sq``), so a re-seeded code starts afresh."""
        if self.reseeded is None:
            return
        rows, new = self.reseeded
        self.codebook.data[rows] = new
        for value in optimizer.state.get(self.codebook, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == self.codebook.shape:
                value[rows] = 0
        self.reseeded = None


class FiniteScalarQuantizer(nn.Module):
    """FSQ (Mentzer et al., 2023): each of ``len(levels)`` channels is bounded and rounded to
    one of ``levels[i]`` values, and a code is the tuple of roundings: ``prod(levels)`` codes,
    no codebook to learn and none to collapse. Straight-through rounding; no auxiliary loss.

    Codes are vectors in [-1, 1]^len(levels); index = mixed-radix number of the per-channel
    levels.
    """

    def __init__(self, levels: Sequence[int]):
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must each be >= 2, got {levels}")
        self.levels_list = levels
        self.dim = len(levels)
        self.num_codes = math.prod(levels)
        self.register_buffer("levels", torch.tensor(levels), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1]), dim=0)
        self.register_buffer("basis", basis, persistent=False)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        # tanh squashes each channel into (-L/2, L/2) so that rounding yields exactly L values;
        # for even L the range is shifted by half a step (levels -L/2 .. L/2 - 1).
        lv = self.levels.to(z.dtype)
        half = (lv - 1) * (1 - 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def _scale(self) -> torch.Tensor:
        return (self.levels // 2).float()

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., len(levels)) -> code vectors in [-1, 1] with a straight-through gradient."""
        b = self._bound(z.float())
        q = b + (torch.round(b) - b).detach()
        return q / self._scale()

    def _indices(self, q: torch.Tensor) -> torch.Tensor:
        digits = torch.round(q * self._scale()).long() + self.levels // 2
        return (digits * self.basis).sum(dim=-1)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the code that each vector of z (..., len(levels)) rounds to."""
        return self._indices(self.quantize(z))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors (..., len(levels)) in [-1, 1] for integer ``indices``."""
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels
        return (digits - self.levels // 2).float() / self._scale()

    def codes(self) -> torch.Tensor:
        """All ``num_codes`` code vectors, (num_codes, len(levels))."""
        return self.lookup(torch.arange(self.num_codes, device=self.levels.device))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z (..., len(levels)) -> (quantised z, indices (...), stats with a zero ``loss``)."""
        z_q = self.quantize(z)
        indices = self._indices(z_q.detach())
        counts = torch.bincount(indices.flatten(), minlength=self.num_codes).float()
        if self.training and _distributed():
            dist.all_reduce(counts)
        return z_q, indices, {"loss": z_q.new_zeros(()), **code_stats(indices, self.num_codes, counts)}


class PatchCodebook(nn.Module):
    """Codes that are pixel patches: ``num_codes`` k-means centroids of training patches, fitted
    once by :meth:`fit` (the tokenizer trainer does it) and kept as a buffer, not learned by
    gradient. A patch's token is its nearest centroid (Euclidean), so tokens start at the
    per-patch k-means baseline a learned tokenizer is measured against, none can die, and a
    token is a function of its own patch alone. Same interface as the other quantisers; its
    vectors are the patches themselves (``dim`` = patch size squared x channels)."""

    def __init__(self, num_codes: int, dim: int):
        super().__init__()
        self.num_codes, self.dim = num_codes, dim
        self.register_buffer("centroids", torch.zeros(num_codes, dim))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, patches: torch.Tensor, iters: int = 10, generator: torch.Generator | None = None) -> None:
        """Fit the codes to ``patches`` (N, dim) by k-means (N >= num_codes)."""
        if patches.ndim != 2 or patches.shape[1] != self.dim or patches.shape[0] < self.num_codes:
            raise ValueError(f"fitting {self.num_codes} pixel codes of size {self.dim} needs at least "
                             f"{self.num_codes} patches of that size, got {tuple(patches.shape)}")
        self.centroids.copy_(kmeans(patches.float(), self.num_codes, iters, generator, spherical=False))
        self.fitted.fill_(True)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Pixel patches (..., dim) for integer ``indices``."""
        return F.embedding(indices, self.centroids)

    @torch.no_grad()
    def nearest(self, z: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """Index of the nearest code for each patch of z (..., dim)."""
        if not bool(self.fitted):
            raise RuntimeError("this tokenizer's pixel codebook (quantizer: kmeans) was never fitted: train it "
                               "with trainers.train_tokenizer, which fits it first, or load a trained checkpoint")
        flat, c = z.detach().reshape(-1, self.dim).float(), self.centroids.float()
        half_sq = 0.5 * c.square().sum(dim=1)
        # argmin ||x - c||^2 = argmax (x.c - |c|^2 / 2), in chunks so a long video needs no
        # (patches x codes) matrix at once.
        with _fp32(flat):
            out = torch.cat([(part @ c.t() - half_sq).argmax(dim=1) for part in flat.split(chunk)])
        return out.reshape(z.shape[:-1])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Patches z (..., dim) -> (their codes' patches, indices (...), stats with a zero ``loss``)."""
        indices = self.nearest(z)
        counts = torch.bincount(indices.flatten(), minlength=self.num_codes).float()
        if self.training and _distributed():
            dist.all_reduce(counts)
        return self.lookup(indices), indices, {"loss": z.new_zeros(()), **code_stats(indices, self.num_codes, counts)}


def restore_reseeded_codes(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Call :meth:`VectorQuantizer.restore_reseeded` on every VQ inside ``model``."""
    for m in model.modules():
        if isinstance(m, VectorQuantizer):
            m.restore_reseeded(optimizer)
