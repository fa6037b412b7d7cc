"""World-model quality metrics: PSNR, rollouts against ground truth, and the simple baselines
and scene checks that the numbers are read against."""
from __future__ import annotations

import numpy as np
import torch

from genie_env.models.tokenizer import patchify, unpatchify
from genie_env.nn.vq import PatchCodebook


def psnr_each(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image along the leading (batch) axis, images in [0, 1] -> (B,)."""
    mse = (pred.float() - target.float()).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean PSNR in dB over the leading (batch) axis of images in [0, 1]."""
    return psnr_each(pred, target).mean()


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each frame t of videos (B, T, C, H, W), averaged over B -> (T,)."""
    return psnr_each(pred.flatten(0, 1), target.flatten(0, 1)).unflatten(0, pred.shape[:2]).mean(dim=0)


@torch.no_grad()
def rollout(tokenizer, dynamics, video: torch.Tensor, actions: torch.Tensor, steps: int | None = None,
            temperature: float | None = None, generators=None) -> torch.Tensor:
    """Generate video (B, T, C, H, W) from its first frame and ``actions`` (B, T-1), decoded to
    float32 pixels, at the tokenizer's and dynamics model's own precision. A rollout longer than
    the tokenizer's window is decoded frame by frame (:func:`decode_long`)."""
    tokens = tokenizer.encode(video[:, :1])
    gen = dynamics.generate(tokens, actions, steps=steps, temperature=temperature, generators=generators)
    return tokenizer.decode(gen) if gen.shape[1] <= tokenizer.cfg.max_frames else decode_long(tokenizer, gen)


@torch.no_grad()
def one_step_predictions(tokenizer, dynamics, tokens: torch.Tensor, actions: torch.Tensor,
                         generators=None) -> torch.Tensor:
    """Each next frame of a real video, given as its tokens (B, T, N), sampled from the real
    frames before it and its action in ``actions`` (B, T-1) -> float32 frames (B, T-1, C, H, W):
    the dynamics model's one-step skill, apart from the errors a rollout compounds. Each
    prediction is decoded after the real tokens it was sampled from. T must fit both models' windows."""
    cache = dynamics.new_cache(tokens.shape[0], tokens.device)
    frames = []
    for t in range(tokens.shape[1] - 1):
        dynamics.observe(cache, tokens[:, t], None if t == 0 else actions[:, t - 1])
        nxt = dynamics.sample_next(cache, actions[:, t], generators=generators)
        frames.append(tokenizer.decode(torch.cat([tokens[:, :t + 1], nxt[:, None]], dim=1))[:, -1])
    return torch.stack(frames, dim=1)


@torch.no_grad()
def first_pass_tokens(dynamics, tokens: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the first MaskGIT pass of each next frame would commit, from the real past: for each
    t >= 1 of tokens (B, T, N), frame t fully masked after clean frames 0..t-1 with their actions
    (B, T-1), the most likely token at each position. Returns counts (0-d tensors) over all
    positions of the tokens that differ from the frame before ("changed"), how many of those the
    argmax gets right and how many it predicts as the frame before's token ("copied"), and the
    same right-count for the tokens that stay. A model that only copies gets the staying tokens
    right and none of the changed ones: the share it gets right is its motion, before sampling.
    With ``action_guidance`` in the model's config the guess is the guided distribution's most
    likely token, as the sampler's."""
    counts = dict.fromkeys(("changed", "changed_right", "changed_copied", "stayed", "stayed_right"), 0)
    for t in range(1, tokens.shape[1]):
        # One greedy pass commits every token: its argmax.
        guess = dynamics.sample_next_uncached(tokens[:, :t], actions[:, :t - 1], actions[:, t - 1], steps=1,
                                              temperature=0)
        true, before = tokens[:, t], tokens[:, t - 1]
        changed = true != before
        right = guess == true
        counts["changed"] += changed.sum()
        counts["changed_right"] += (right & changed).sum()
        counts["changed_copied"] += ((guess == before) & changed).sum()
        counts["stayed"] += (~changed).sum()
        counts["stayed_right"] += (right & ~changed).sum()
    return {k: torch.as_tensor(v).cpu() for k, v in counts.items()}


@torch.no_grad()
def encode_long(tokenizer, video: torch.Tensor) -> torch.Tensor:
    """Video (B, T, C, H, W) of any length T -> tokens (B, T, N), frame by frame against the
    encoder's KV cache, which slides past the tokenizer's ``max_frames``."""
    cache, _ = tokenizer.new_caches(video.shape[0], video.device)
    return torch.stack([tokenizer.encode_step(video[:, t], cache) for t in range(video.shape[1])], dim=1)


@torch.no_grad()
def decode_long(tokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens (B, T, N) of any length T -> float32 video (B, T, C, H, W), frame by frame against
    the decoder's KV cache, which slides past the tokenizer's ``max_frames`` as the env's does."""
    _, cache = tokenizer.new_caches(tokens.shape[0], tokens.device)
    return torch.stack([tokenizer.decode_step(tokens[:, t], cache) for t in range(tokens.shape[1])], dim=1)


def global_shifts(prev: torch.Tensor, obs: torch.Tensor, max_dx: int, max_dy: int = 0) -> torch.Tensor:
    """The global motion from ``prev`` to ``obs`` (..., C, H, W): for each pair, the integer shift
    (dy, dx) with ``obs[y, x] ~ prev[y + dy, x + dx]`` (the scene moved up by dy and left by dx
    pixels) that gives the least mean absolute difference over the overlap, in
    [-max_dy, max_dy] x [-max_dx, max_dx]; ties go to the first in (dy, dx) order. -> (..., 2) int64."""
    a, b = prev.detach().float(), obs.detach().float()
    h, w = a.shape[-2:]
    shifts = [(dy, dx) for dy in range(-max_dy, max_dy + 1) for dx in range(-max_dx, max_dx + 1)]
    errs = torch.stack([(a[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
                         - b[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]).abs().mean(dim=(-3, -2, -1))
                        for dy, dx in shifts], dim=-1)
    return torch.tensor(shifts, dtype=torch.int64, device=errs.device)[errs.argmin(dim=-1)]


def frame_shifts(prev: np.ndarray, obs: np.ndarray, max_dx: int, max_dy: int = 0) -> np.ndarray:
    """:func:`global_shifts` of frames (N, H, W, C) as numpy arrays -> (N, 2) int."""
    to_chw = lambda x: torch.from_numpy(np.ascontiguousarray(x)).movedim(-1, -3)  # noqa: E731
    return global_shifts(to_chw(prev), to_chw(obs), max_dx, max_dy).numpy()


def rightward_progress(prev: np.ndarray, action: int, obs: np.ndarray, max_shift: int = 4) -> float:
    """Pixels the scene scrolled left from ``prev`` to ``obs`` (H, W, 3) (the agent moving right
    in a side-scroller such as CoinRun), in [-max_shift, max_shift]: the horizontal shift that best
    aligns the two frames (:func:`frame_shifts`). The signature is the env's ``reward_fn``."""
    return float(frame_shifts(prev[None], obs[None], max_shift)[0, 1])


def colour_histograms(frames: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Normalised RGB histograms (N, bins**3) of frames (N, 3, H, W) in [0, 1]."""
    q = (frames.float().clamp(0, 1) * (bins - 1e-6)).long()  # (N, 3, H, W) bin per channel
    cell = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = torch.zeros(frames.shape[0], bins ** 3, device=frames.device)
    hist.scatter_add_(1, cell.flatten(1), torch.ones_like(cell.flatten(1), dtype=hist.dtype))
    return hist / hist.sum(dim=1, keepdim=True)


def nearest_histogram_distance(frames: torch.Tensor, reference: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """For each frame (N, 3, H, W), the total-variation distance (0 = same colours, 1 = none
    shared) of its colour histogram to the closest histogram in ``reference`` (M, bins**3): how
    far a frame is from looking like any real frame of the game."""
    hist = colour_histograms(frames, bins)
    return torch.stack([0.5 * (h[None] - reference).abs().sum(dim=1).min() for h in hist])


def patch_kmeans_reconstruct(train_frames: torch.Tensor, test_frames: torch.Tensor, patch: int, codes: int,
                             iters: int = 15, seed: int = 0) -> torch.Tensor:
    """The baseline a learned tokenizer must beat: ``test_frames`` (N, 3, H, W) in [0, 1] with
    each ``patch`` x ``patch`` patch replaced by the nearest of ``codes`` k-means centroids
    fitted to the patches of ``train_frames``: the same bits per frame, no learning."""
    data = patchify(train_frames.float(), patch).flatten(0, 1)
    book = PatchCodebook(min(codes, data.shape[0]), data.shape[1])
    book.fit(data, iters, torch.Generator().manual_seed(seed))
    recon = book.lookup(book.nearest(patchify(test_frames.float(), patch)))
    grid = (test_frames.shape[-2] // patch, test_frames.shape[-1] // patch)
    return unpatchify(recon, patch, grid, test_frames.shape[1])


def horizontal_scrolls(video: torch.Tensor, max_dx: int = 4) -> np.ndarray:
    """The sideways scroll (pixels the scene moved left, as :func:`rightward_progress` counts it)
    between each pair of consecutive frames of videos (B, T, C, H, W) in [0, 1] -> (B, T-1) int."""
    video = video.detach().float().cpu()
    return global_shifts(video[:, :-1], video[:, 1:], max_dx)[..., 1].numpy()


@torch.no_grad()
def scrolls_beside(video: torch.Tensor, following: torch.Tensor) -> np.ndarray:
    """The sideways scroll from each real frame of ``video`` (B, T, C, H, W) to the frame put
    after it in ``following`` (B, T-1, C, H, W): a prediction, or a reconstruction of the real next
    frame -> (B, T-1) int, comparable with :func:`horizontal_scrolls` of the real video."""
    pairs = torch.stack([video[:, :-1], following], dim=2).flatten(0, 1)  # (B*(T-1), 2, C, H, W)
    return horizontal_scrolls(pairs).reshape(video.shape[0], -1)
