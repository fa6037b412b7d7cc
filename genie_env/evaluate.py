"""``genie-env eval``: world-model quality on held-out episodes, as a JSON and a table.

    genie-env eval --data_dir data/coinrun          # the bundled model
    genie-env eval --data_dir D --tokenizer_path T --lam_path L --dynamics_path X --out eval/

- tokenizer: reconstruction PSNR and SSIM;
- LAM: codebook usage and perplexity, next-frame PSNR, and with true actions in the data the
  accuracy of the best latent -> true action mapping and their mutual information (bits);
- dynamics: PSNR of an autoregressive rollout from one prompt frame with the LAM's inferred
  actions at each t, and the Genie paper's delta-t PSNR at t = 4: PSNR(x_t, x^_t) with inferred
  actions minus PSNR(x_t, x^'_t) with actions drawn uniformly at random;
- scrolling: of the consecutive held-out frame pairs whose scene scrolls sideways (CoinRun's
  camera moves 1 pixel a frame), the share that the tokenizer's reconstruction, the k-means
  baseline's, and the rollouts under inferred and under random actions scroll by the same
  number of pixels: a world whose tokenizer loses the scroll cannot answer the arrow keys;
- one step from the real past: each next frame sampled from the real frames before it and its
  inferred action (PSNR, and the share of scrolling pairs it scrolls alike beside the real frame
  before it), against repeating the frame or its reconstruction (what a model that only copied
  the tokens would score) and, for the scroll, against the real next frame's reconstruction in
  the same place: the dynamics model's own skill, before a rollout compounds its errors;
- the first MaskGIT pass from the real past, in tokens: of the tokens that change from the frame
  before, the share its most likely token gets right and the share it predicts as the frame
  before's (a model that only copies: 0 and 1), beside its accuracy on the tokens that stay;
- baselines the numbers are read against: "repeat the prompt" (PSNR of the prompt frame held
  still) for every rollout figure, and per-patch k-means with the tokenizer's patch size and
  code count (the same bits per frame, no learning) for the tokenizer;
- long horizon: rollout PSNR out to ``horizon`` frames (past the model's window), and a
  ``long_steps``-step episode of the world under random actions from ``drift_prompts`` held-out
  prompts (8 by default; one episode's figures move with its prompts), scored by how far each frame's
  colours are from the closest real frame's (0 = a real frame's palette), against the same
  distance for real held-out frames, and a picture of that episode (``drift.png``: a row per
  prompt, the first 8, a column per scored step) to see what the distance scores; with
  ``--drift_actions data`` also under latent actions drawn as the recorded player's transitions
  use them (CoinRun's codes for jumps, falls and scrolls are not equally common: uniformly drawn
  codes ask a world to jump far more often than to fall) (``drift_data.png``);
- with an arrow-key map (``action_map.json``), how often holding "right" (or "left") scrolls the
  scene the way the key says, and with key probes (``genie-env probes``, ``--key_probes``) the
  same from real states, against what the real game did when the key was held there (from an
  episode's first frame the real game never scrolls left: its agent starts against a wall);
- a video: ground truth | rollout with inferred actions | rollout with random actions.

PSNR and SSIM stand in for FVD, whose I3D weights cannot be downloaded here.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genie_env.checkpoint import load_model, load_model_and_config
from genie_env.cli import check_positive
from genie_env.data.h5 import ClipDataset
from genie_env.data.probes import load_key_probes
from genie_env.prompts import load_prompts
from genie_env.device import resolve_device, resolve_dtype
from genie_env.bundled import bundled_paths, load_action_map
from genie_env.metrics import (colour_histograms, decode_long, encode_long, first_pass_tokens, frame_shifts,
                               horizontal_scrolls, nearest_histogram_distance, one_step_predictions,
                               patch_kmeans_reconstruct, psnr, psnr_each, psnr_per_frame, rollout, scrolls_beside)
from genie_env.video import to_uint8_frames, write_grid, write_video
from genie_env.nn.vq import code_stats
from genie_env.world import World

log = logging.getLogger("genie_env.eval")


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of images (..., C, H, W) in [0, 1]: 11x11 Gaussian window, sigma 1.5 (Wang et al., 2004)."""
    x, y = pred.float().flatten(0, -4), target.float().flatten(0, -4)
    c = x.shape[1]
    g = torch.exp(-(torch.arange(11, dtype=torch.float32, device=x.device) - 5) ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(c, 1, 11, 11)

    def blur(t):
        return F.conv2d(t, window, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean()


def action_agreement(latent: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """How well latent actions predict true ones: best-mapping accuracy and mutual information.

    The plug-in mutual information of N pairs overstates the truth by about
    (cells - rows - columns + 1) / (2 N ln 2) bits (0.16 bits for 8 latent x 15 true actions
    over 448 transitions), so the Miller-Madow corrected value is reported beside it."""
    joint = np.zeros((latent.max() + 1, true.max() + 1))
    np.add.at(joint, (latent, true), 1)
    p = joint / joint.sum()
    pl, pt = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mi = float((p[nz] * np.log2(p[nz] / (pl @ pt)[nz])).sum())
    bias = (nz.sum() - (pl > 0).sum() - (pt > 0).sum() + 1) / (2 * joint.sum() * np.log(2))
    return {"accuracy": float(joint.max(1).sum() / joint.sum()),
            "chance accuracy": float(pt.max()), "mutual information (bits)": mi,
            "mutual information, bias-corrected (bits)": float(mi - bias)}


def clip_sample(data_dir, clip_len: int, image_size, split, stage, num_clips: int, seed: int):
    """The clips eval scores: a dataset of ``split`` episodes chosen as the training run's
    ``stage`` (DataConfig) held them out, and ``num_clips`` of its clip indices drawn by ``seed``."""
    ds = ClipDataset(data_dir, clip_len=clip_len, image_size=image_size, split=split,
                     val_fraction=stage.val_fraction if stage else 0.1, seed=stage.seed if stage else 0)
    g = torch.Generator().manual_seed(seed)
    return ds, torch.randperm(len(ds), generator=g)[: min(num_clips, len(ds))].tolist()


@torch.no_grad()
def latent_and_true_actions(lam, ds: ClipDataset, idx: list[int], batch: int, dev,
                            known: list[torch.Tensor] = ()) -> tuple[np.ndarray, np.ndarray | None]:
    """The LAM's actions on the transitions of clips ``idx`` of ``ds``, and the true discrete
    actions when the data has them (else None). ``known``: the LAM's actions (B, T-1) already
    inferred for the first clips of ``idx``, in order; they are not inferred again."""
    latent = [a.flatten().cpu() for a in known]
    done = sum(a.shape[0] for a in known)
    true = []
    for start in range(0, len(idx), 4 * batch):
        items = [ds[i] for i in idx[start:start + 4 * batch]]
        if start + len(items) > done:
            todo = items[max(0, done - start):]
            latent.append(lam.eval().infer_actions(torch.stack([it["frames"] for it in todo]).to(dev)).flatten().cpu())
        if "actions" in items[0] and not torch.is_floating_point(items[0]["actions"]):
            true.append(torch.stack([it["actions"][:-1] for it in items]).flatten())
    return torch.cat(latent).numpy(), (torch.cat(true).numpy() if true else None)


def _frames(ds: ClipDataset, idx: list[int]) -> torch.Tensor:
    return torch.stack([ds[i]["frames"] for i in idx])


@torch.no_grad()
def long_horizon(tokenizer, lam, dynamics, data_dir, split, stage, horizon: int, num_clips: int,
                 seed: int, dev) -> dict:
    """Rollout PSNR by t out to ``horizon`` generated frames with the LAM's inferred actions, the
    repeat-the-prompt baseline, and the real frames' own reconstruction (what a rollout that drew
    every true token would score: no world can beat it), on clips of ``horizon + 1`` frames."""
    try:
        ds, idx = clip_sample(data_dir, horizon + 1, tokenizer.cfg.image_size, split, stage, num_clips, seed)
    except ValueError as e:  # no episode that long
        log.warning("no long-horizon rollout: %s", e)
        return {}
    video = _frames(ds, idx).to(dev)
    actions = lam.infer_actions(video)
    gens = [torch.Generator(device=dev).manual_seed(seed + i) for i in range(video.shape[0])]
    p = psnr_per_frame(rollout(tokenizer, dynamics, video, actions, generators=gens), video)
    still = psnr_per_frame(video[:, :1].expand_as(video), video)
    recon = psnr_per_frame(decode_long(tokenizer, encode_long(tokenizer, video)), video)
    marks = sorted({t for t in (4, dynamics.cfg.max_frames, 2 * dynamics.cfg.max_frames, 16, horizon) if t <= horizon})
    return {"long clips": len(idx),
            **{f"long clips: rollout PSNR at t={t}, inferred actions (dB)": float(p[t]) for t in marks},
            **{f"long clips: repeat-the-prompt PSNR at t={t} (dB)": float(still[t]) for t in marks},
            **{f"long clips: the real frames' reconstruction PSNR at t={t} (dB)": float(recon[t]) for t in marks}}


@torch.no_grad()
def action_chain(lam, data: ClipDataset, clips: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """How the recorded player uses the LAM's codes: their frequencies (A,) over the transitions
    of ``clips`` clips of ``data`` drawn by ``seed``, and a first-order chain (A, A) fitted to
    consecutive transitions (row a: the next code's probabilities after code a; add-one smoothed,
    so every code stays reachable). Stepping a world under this chain asks it for what the
    recorded player did: a jump's codes followed by a fall's, not every code one time in A."""
    a = lam.cfg.num_actions
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:clips].tolist()
    counts, pairs = torch.zeros(a), torch.ones(a, a)
    dev = next(lam.parameters()).device
    for start in range(0, len(pick), 16):
        codes = lam.eval().infer_actions(_frames(data, pick[start:start + 16]).to(dev)).cpu()  # (B, T-1)
        counts += torch.bincount(codes.flatten(), minlength=a).float()
        pairs += torch.bincount((codes[:, :-1] * a + codes[:, 1:]).flatten(), minlength=a * a).float().view(a, a)
    return counts / counts.sum(), pairs / pairs.sum(dim=1, keepdim=True)


DATA_DRIFT = "drift under the data's latent actions"  # the figures' prefix under action_chain's codes
CHAIN_CLIP_LEN = 16  # clips the chain is fitted on: 15 transitions each, short enough for short episodes


@torch.no_grad()
def drift(world: World, prompts: torch.Tensor, reference: torch.Tensor, real: torch.Tensor,
          steps: int, seed: int, frames_at: dict | None = None,
          chain: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Run ``prompts`` (B, 3, H, W) for ``steps`` steps under random latent actions and report
    each checkpoint's mean colour-histogram distance to the nearest ``reference`` frame, beside
    the same distance for ``real`` held-out frames (what a real CoinRun frame scores).
    The actions are drawn uniformly, or with ``chain`` (:func:`action_chain`: frequencies and
    transition matrix) as the recorded player's codes run; the keys say which.
    ``frames_at`` (a dict): filled with the frames (B, 3, H, W) at step 0 (the world's first
    frame) and at each checkpoint, to look at what the distances score."""
    g = torch.Generator().manual_seed(seed)
    gens = [torch.Generator(device=world.device).manual_seed(seed + i) for i in range(prompts.shape[0])]
    ref = colour_histograms(reference)
    first = world.reset(prompts)
    if frames_at is not None:
        frames_at[0] = first.cpu()
    marks = {t for t in (1, 10, 50, 100, 250, 500, steps) if t <= steps}
    label = "drift" if chain is None else DATA_DRIFT
    out = {"drift: real held-out frames' colour distance": float(nearest_histogram_distance(real, ref).mean())}
    b = prompts.shape[0]
    # Only the chain draws a first code, so uniform actions stay those of earlier evaluations.
    codes = None if chain is None else torch.multinomial(chain[0], b, replacement=True, generator=g)
    for t in range(1, steps + 1):
        if chain is None:
            actions = torch.randint(0, world.num_actions, (b,), generator=g)
        else:
            actions = codes = torch.multinomial(chain[1][codes], 1, generator=g)[:, 0]
        frames = world.step(actions, generators=gens).frames
        if t in marks:
            out[f"{label}: colour distance at step {t}"] = float(nearest_histogram_distance(frames.cpu(), ref).mean())
            if frames_at is not None:
                frames_at[t] = frames.cpu()
    return out


@torch.no_grad()
def direction_check(world: World, prompts: torch.Tensor, action_map: dict, steps: int = 6,
                    seeds: int = 4, seed: int = 0, real_scroll: dict | None = None, chunk: int = 64,
                    real_frames: dict | None = None) -> dict:
    """How often holding the mapped "right" (or "left") latent action for ``steps`` steps scrolls
    the scene that way (total ``rightward_progress`` above 0 for right, below 0 for left): one
    trial per prompt, direction and seed, stepped ``chunk`` trials at a time.

    ``real_scroll`` (key probes, :mod:`genie_env.data.probes`): for each direction, the real game's
    total scroll (P,) when that key was held ``steps`` steps from each prompt. Then the check also
    reports how often the real game scrolled each way, the share of those trials in which the world
    did too (what a faithful world scores 1 on), and how often the world's scroll has the sign of
    the real game's, a standstill included.

    ``real_frames``: for each direction, the real game's frames (P, steps, 3, H, W) in [0, 1] under
    that key. Then the check also reports, step by step, the PSNR of the world's frames against
    them, of the prompt repeated and of the prompt's reconstruction (the world's first frame)
    repeated, the fair "standing still" for a world that draws through its tokenizer: a scroll
    drawn with the wrong picture (stripes, a wiped level) counts as a scroll above, but not here.
    With both, a trial also passes "with the picture kept" only when the world scrolled the key's
    way and its last frame is at least as close to the real game's as standing still is.
    """
    rows = [(p, d, s) for p in range(prompts.shape[0]) for d in ("right", "left") for s in range(seeds)]
    scroll = np.zeros(len(rows))
    fidelity, still_recon = np.zeros((len(rows), steps)), np.zeros((len(rows), steps))
    for lo in range(0, len(rows), chunk):
        part = rows[lo:lo + chunk]
        world_rows = World(world.tokenizer, world.dynamics, len(part), world.device, world.maskgit_steps,
                           world.temperature, world.dtype, action_guidance=world.action_guidance)
        start = world_rows.reset(prompts[[p for p, _, _ in part]])
        prev = to_uint8_frames(start)
        actions = torch.tensor([action_map[d] for _, d, _ in part])
        gens = [torch.Generator(device=world.device).manual_seed(seed + 1000 * s + p) for p, _, s in part]
        for k in range(steps):
            frames = world_rows.step(actions, generators=gens).frames
            obs = to_uint8_frames(frames)
            scroll[lo:lo + len(part)] += frame_shifts(prev, obs, max_dx=4)[:, 1]  # rightward_progress
            prev = obs
            if real_frames is not None:
                target = torch.stack([real_frames[d][p, k] for p, d, _ in part]).to(frames.device)
                fidelity[lo:lo + len(part), k] = psnr_each(frames, target).cpu().numpy()
                still_recon[lo:lo + len(part), k] = psnr_each(start, target).cpu().numpy()
    real = None if real_scroll is None else np.array([real_scroll[d][p] for p, d, _ in rows], dtype=float)
    kept = None if real_frames is None else fidelity[:, -1] >= still_recon[:, -1]
    out = score_directions(scroll, [d for _, d, _ in rows], real, kept)
    if real_frames is not None:
        held = torch.stack([real_frames[d][p] for p, d, _ in rows])  # (trials, steps, 3, H, W)
        still = prompts[[p for p, _, _ in rows]].cpu()[:, None].expand_as(held)
        out["arrow keys: PSNR against the real game's frames under the key, by step (dB)"] = \
            fidelity.mean(axis=0).tolist()
        out["arrow keys: the prompt repeated, PSNR against them, by step (dB)"] = \
            psnr_each(still.flatten(0, 1), held.flatten(0, 1)).reshape(len(rows), steps).mean(dim=0).tolist()
        out["arrow keys: the prompt's reconstruction repeated, PSNR against them, by step (dB)"] = \
            still_recon.mean(axis=0).tolist()
    return out


def score_directions(scroll: np.ndarray, directions: list[str], real: np.ndarray | None = None,
                     kept: np.ndarray | None = None) -> dict:
    """The arrow-key figures of trials that held ``directions`` ("right"/"left") and scrolled the
    world's scene ``scroll`` pixels rightward in all, beside the real game's ``real`` scroll of
    each trial when known; ``kept`` (bool per trial): whether the world's last frame was at least
    as close to the real game's as standing still (see :func:`direction_check`)."""
    right = np.array([d == "right" for d in directions])
    sign = np.where(right, 1, -1)
    correct = scroll * sign > 0
    out = {"arrow keys: right scrolls right (fraction)": float(correct[right].mean()),
           "arrow keys: left scrolls left (fraction)": float(correct[~right].mean()),
           "arrow keys: trials": len(directions)}
    if real is not None:
        for name, mask in (("right", right), ("left", ~right)):
            real_did = mask & (real * sign > 0)
            out[f"arrow keys: the real game's {name} scrolls {name} (fraction)"] = float(real_did.sum() / mask.sum())
            if real_did.any():
                out[f"arrow keys: {name} scrolls {name} where the real game's did (fraction)"] = \
                    float(correct[real_did].mean())
                if kept is not None:
                    out[f"arrow keys: {name} scrolls {name} where the real game's did, with the picture kept "
                        f"(fraction)"] = float((correct & kept)[real_did].mean())
        out["arrow keys: scroll has the real game's sign, standstills too (fraction)"] = \
            float((np.sign(scroll) == np.sign(real)).mean())
    return out


@torch.no_grad()
def evaluate_world(tokenizer, lam, dynamics, data_dir, out_dir: str | Path | None = None, num_clips: int = 32,
                   clip_len: int | None = None, split: str | None = "val", seed: int = 0, batch: int = 16,
                   video_name: str = "side_by_side.mp4", horizon: int = 32, long_steps: int = 500,
                   baseline_data=None, action_map: dict | None = None, data_config=None,
                   action_clips: int = 256, key_probes: dict | None = None, drift_prompts: int = 8,
                   drift_actions: tuple[str, ...] = ("uniform",)) -> dict:
    """The numbers listed in the module docstring, on ``num_clips`` clips of ``split`` episodes.

    ``baseline_data``: H5 episodes (not the evaluated ones) to fit the k-means baseline and to
    draw the drift check's reference frames from; by default the training split of ``data_dir``
    unless ``split`` is None (all episodes), when both are left out. ``horizon`` or
    ``long_steps`` 0 leaves out their parts. The LAM's statistics (perplexity, agreement with
    the true actions) come from ``action_clips`` clips, at least ``num_clips``: the LAM is cheap
    and mutual information needs many transitions to be read. The drift episode starts from the
    first ``drift_prompts`` clips' first frames (at most ``num_clips``; its picture shows the first
    8): the colour distance of one episode varies with its prompts, so comparing worlds whose
    figures lie close wants more of them. ``drift_actions``: "uniform" (each latent action one
    time in A), "data" (the codes as the LAM labels the ``baseline_data`` player's transitions,
    :func:`action_chain`), or both; each has its own figures and picture. ``data_config`` (the
    dynamics checkpoint's ``DataConfig``) decides which episodes form the held-out split, as in its training run.
    """
    dev = next(dynamics.parameters()).device
    stage = data_config
    clip_len = clip_len or min(dynamics.cfg.max_frames, tokenizer.cfg.max_frames)
    # One draw of clips: the first num_clips are rolled out, all of them label the LAM's statistics.
    val, action_idx = clip_sample(data_dir, clip_len, tokenizer.cfg.image_size, split, stage,
                                   max(num_clips, action_clips), seed)
    idx = action_idx[:num_clips]
    g = torch.Generator().manual_seed(seed)
    sums: dict[str, list] = {}
    token_counts = torch.zeros(tokenizer.cfg.num_codes, dtype=torch.long)
    first, inferred_actions, scrolls = None, [], []
    token_counts_first: dict[str, torch.Tensor] = {}
    for start in range(0, len(idx), batch):
        items = [val[i] for i in idx[start:start + batch]]
        video = torch.stack([it["frames"] for it in items]).to(dev)
        n = video.shape[0]
        tokens = tokenizer.encode(video)
        token_counts += torch.bincount(tokens.flatten().cpu(), minlength=tokenizer.cfg.num_codes)
        recon = tokenizer.decode(tokens)
        lam_out = lam.eval()(video)
        actions = lam_out["actions"]
        inferred_actions.append(actions)
        gens = [torch.Generator(device=dev).manual_seed(seed + start + i) for i in range(n)]
        inferred = rollout(tokenizer, dynamics, video, actions, generators=gens)
        random_actions = torch.randint(0, dynamics.cfg.num_actions, actions.shape, generator=g).to(dev)
        gens = [torch.Generator(device=dev).manual_seed(seed + start + i) for i in range(n)]
        randomized = rollout(tokenizer, dynamics, video, random_actions, generators=gens)
        gens = [torch.Generator(device=dev).manual_seed(seed + start + i) for i in range(n)]
        one_step = one_step_predictions(tokenizer, dynamics, tokens, actions, generators=gens)
        for key, value in first_pass_tokens(dynamics, tokens, actions).items():
            token_counts_first[key] = token_counts_first.get(key, 0) + value
        for key, value in (("tok_psnr", psnr_per_frame(recon, video).mean()), ("tok_ssim", ssim(recon, video)),
                           ("lam_psnr", psnr_per_frame(lam_out["recon"], video[:, 1:]).mean()),
                           ("roll_inferred", psnr_per_frame(inferred, video)),
                           ("roll_random", psnr_per_frame(randomized, video)),
                           ("roll_still", psnr_per_frame(video[:, :1].expand_as(video), video)),
                           ("one_step", psnr_per_frame(one_step, video[:, 1:]).mean()),
                           ("copy_step", psnr_per_frame(video[:, :-1], video[:, 1:]).mean()),
                           ("copy_recon_step", psnr_per_frame(recon[:, :-1], video[:, 1:]).mean())):
            sums.setdefault(key, []).append((value.cpu() * n, n))
        if tokenizer.pixel_codes:
            codes_only = psnr_per_frame(tokenizer.code_patches(tokens), video).mean()
            sums.setdefault("tok_codes_psnr", []).append((codes_only.cpu() * n, n))
        # Each real frame beside the frame that follows it: predicted, or the real one reconstructed
        # (the most a prediction in the tokenizer's codes can keep).
        scrolls.append(np.stack([horizontal_scrolls(v) for v in (video, recon, inferred, randomized)]
                                + [scrolls_beside(video, nxt) for nxt in (one_step, recon[:, 1:])]))
        if first is None:
            first = (video[0], inferred[0], randomized[0])

    def mean(key):
        return sum(v for v, _ in sums[key]) / sum(n for _, n in sums[key])

    p_inf, p_rand = mean("roll_inferred"), mean("roll_random")
    latent, true = latent_and_true_actions(lam, val, action_idx, batch, dev, known=inferred_actions)
    lam_stats = code_stats(torch.from_numpy(latent), lam.cfg.num_actions)
    t = min(4, clip_len - 1)  # frames counted from 0 here: index 4 is the paper's t = 4 after the prompt
    results = {
        "clips": len(idx), "clip_len": clip_len, "split": split, "commit noise": float(dynamics.cfg.commit_noise),
        "temperature": float(dynamics.cfg.temperature), "MaskGIT steps": int(dynamics.cfg.maskgit_steps),
        "MaskGIT passes that sample": dynamics.cfg.sampled_passes,
        "action guidance": float(dynamics.cfg.action_guidance),
        "tokenizer PSNR (dB)": float(mean("tok_psnr")), "tokenizer SSIM": float(mean("tok_ssim")),
        **({"tokenizer PSNR, its pixel codes alone (dB)": float(mean("tok_codes_psnr"))} if "tok_codes_psnr" in sums else {}),
        "tokenizer codebook perplexity": float(code_stats(None, tokenizer.cfg.num_codes, token_counts.float())["perplexity"]),
        "tokenizer codebook size": tokenizer.cfg.num_codes,
        "LAM next-frame PSNR (dB)": float(mean("lam_psnr")),
        "LAM codebook usage": float(lam_stats["usage"]),
        "LAM perplexity": float(lam_stats["perplexity"]),
        "rollout PSNR by t, inferred actions (dB)": [round(float(x), 3) for x in p_inf[1:]],
        "rollout PSNR by t, random actions (dB)": [round(float(x), 3) for x in p_rand[1:]],
        f"rollout PSNR at t={t}, inferred actions (dB)": float(p_inf[t]),
        f"rollout PSNR at t={t}, random actions (dB)": float(p_rand[t]),
        f"delta-t PSNR at t={t} (dB)": float(p_inf[t] - p_rand[t]),
        f"repeat-the-prompt PSNR at t={t} (dB)": float(mean("roll_still")[t]),
        "one step from the real past, inferred actions: PSNR (dB)": float(mean("one_step")),
        "one step from the real past: repeat-the-frame PSNR (dB)": float(mean("copy_step")),
        "one step from the real past: the frame's reconstruction repeated, PSNR (dB)": float(mean("copy_recon_step")),
    }
    c = {k: float(v) for k, v in token_counts_first.items()}
    results["first MaskGIT pass from the real past: tokens that change from the frame before (fraction)"] = \
        c["changed"] / (c["changed"] + c["stayed"])
    if c["changed"]:
        results["first MaskGIT pass from the real past: changing tokens predicted right (fraction)"] = c["changed_right"] / c["changed"]
        results["first MaskGIT pass from the real past: changing tokens predicted as the frame before's (fraction)"] = \
            c["changed_copied"] / c["changed"]
    if c["stayed"]:
        results["first MaskGIT pass from the real past: staying tokens predicted right (fraction)"] = c["stayed_right"] / c["stayed"]
    scroll = np.concatenate(scrolls, axis=1)  # (6, clips, T-1): real, reconstruction, two rollouts, one step, its ceiling
    moved = scroll[0] != 0
    results["scrolling: consecutive real frame pairs that scroll sideways"] = int(moved.sum())
    if moved.any():
        for row, name in ((1, "tokenizer reconstruction"), (2, "rollout, inferred actions"),
                          (3, "rollout, random actions"), (4, "one step from the real past, inferred actions"),
                          (5, "one step from the real past, the real next frame's reconstruction")):
            results[f"scrolling: {name} scrolls alike (fraction)"] = float((scroll[row] == scroll[0])[moved].mean())
    if true is not None:
        results["LAM vs true actions: transitions"] = len(true)
        agreement = action_agreement(latent, true)
        results.update({f"LAM vs true actions: {k}": v for k, v in agreement.items()})
    reference = None
    if baseline_data is not None or split is not None:
        base = ClipDataset(baseline_data or data_dir, clip_len=1, image_size=tokenizer.cfg.image_size,
                           split="train" if baseline_data is None else None)
        pick = torch.randperm(len(base), generator=torch.Generator().manual_seed(seed))[:128].tolist()
        reference = _frames(base, pick)[:, 0]
        clips = torch.stack([val[i]["frames"] for i in idx[:64]])
        test = clips.flatten(0, 1)
        kmeans = patch_kmeans_reconstruct(reference, test, tokenizer.cfg.patch_size, tokenizer.cfg.num_codes,
                                          iters=10, seed=seed)
        results["k-means baseline PSNR (dB)"] = float(psnr(kmeans, test))
        real = scroll[0][:len(clips)]  # the rolled-out clips come first in idx, as here
        if (real != 0).any():
            kept = horizontal_scrolls(kmeans.view_as(clips)) == real
            results["scrolling: k-means baseline scrolls alike (fraction)"] = float(kept[real != 0].mean())
    if horizon > 0:
        results.update(long_horizon(tokenizer, lam, dynamics, data_dir, split, stage, horizon,
                                    num_clips, seed, dev))
    dtype = next(dynamics.parameters()).dtype
    firsts = torch.stack([val[i]["frames"][0] for i in idx[:max(8, drift_prompts)]]).to(dev)
    drift_frames: dict[int, torch.Tensor] = {}
    data_drift_frames: dict[int, torch.Tensor] = {}
    if long_steps > 0 and reference is not None:
        starts = firsts[:drift_prompts]
        real = torch.stack([val[i]["frames"][-1] for i in idx])
        results["drift: prompts"] = len(starts)
        for kind in drift_actions:
            chain = None
            if kind == "data":
                played = ClipDataset(baseline_data or data_dir, clip_len=CHAIN_CLIP_LEN,
                                     image_size=tokenizer.cfg.image_size,
                                     split="train" if baseline_data is None else None)
                chain = action_chain(lam, played, seed=seed)
                results[f"{DATA_DRIFT}: code frequencies"] = [round(float(x), 4) for x in chain[0]]
            results.update(drift(World(tokenizer, dynamics, len(starts), dev, dtype=dtype), starts, reference, real,
                                 long_steps, seed, chain=chain,
                                 frames_at=drift_frames if chain is None else data_drift_frames))
    prompts = firsts[:8]
    world = World(tokenizer, dynamics, prompts.shape[0], dev, dtype=dtype)
    if action_map is not None and {"left", "right"} <= set(action_map):
        results.update(direction_check(world, prompts, action_map, seed=seed))
        if key_probes is not None:
            results.update(probe_check(world, key_probes, action_map, seed))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results["video"] = str(write_video(out / video_name, torch.cat(first, dim=-1)))
        for frames, name, key in ((drift_frames, "drift.png", "drift picture"),
                                  (data_drift_frames, "drift_data.png", f"{DATA_DRIFT}: picture")):
            if frames:  # rows: the prompts; columns: steps 0, then each drift checkpoint
                results[key] = str(write_grid(out / name, torch.stack([frames[t][:8] for t in sorted(frames)], dim=1)))
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def probe_check(world: World, probes: dict, action_map: dict, seed: int = 0, seeds: int = 2) -> dict:
    """:func:`direction_check` from the key probes' prompts, ``seeds`` trials per probe and key,
    against the real game's scroll there (keys prefixed "arrow keys on key probes")."""
    missing = {"right", "left"} - set(probes["keys"])
    if missing:
        raise ValueError(f"the key probes lack the keys {sorted(missing)}; write them with genie-env probes")
    size = world.tokenizer.cfg.image_size
    prompts = load_prompts(probes["prompts"], size, "key probes").to(world.device)
    real = {k: probes["scroll"][:, i] for i, k in enumerate(probes["keys"])}
    n, steps = len(prompts), probes["steps"]
    held = {k: load_prompts(probes["frames"][:, i].reshape(n * steps, *probes["frames"].shape[-3:]), size,
                            "key probes").reshape(n, steps, 3, *size) for i, k in enumerate(probes["keys"])}
    out = direction_check(world, prompts, action_map, steps, seeds, seed, real_scroll=real, real_frames=held)
    return {k.replace("arrow keys", "arrow keys on key probes", 1): v for k, v in out.items()}


def format_table(results: dict) -> str:
    width = max([52, *map(len, results)])
    lines = [f"{'metric':<{width}} value"]
    for k, v in results.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        elif isinstance(v, list):
            v = " ".join(f"{x:.1f}" for x in v)
        lines.append(f"{k:<{width}} {v}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data_dir", required=True, help="H5 episodes; the held-out split is evaluated")
    p.add_argument("--tokenizer_path", default=None)
    p.add_argument("--lam_path", default=None)
    p.add_argument("--dynamics_path", default=None)
    p.add_argument("--out", default="eval", help="folder for results.json and the video")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--clip_len", type=int, default=None, help="default: the models' context length")
    p.add_argument("--split", default="val", choices=["val", "train", "all"])
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--horizon", type=int, default=32,
                   help="long-horizon rollout length in generated frames (0: skip)")
    p.add_argument("--long_steps", type=int, default=500,
                   help="steps of the random-action episode scored for drift (0: skip)")
    p.add_argument("--drift_prompts", type=int, default=None,
                   help="held-out prompts the drift episode starts from, at most --clips (default: 8, or "
                        "--clips if fewer)")
    p.add_argument("--drift_actions", nargs="+", default=["uniform"], choices=["uniform", "data"],
                   help="the drift episode's latent actions: uniform (each one time in 8), data (drawn as the "
                        "recorded player's transitions use the LAM's codes: frequencies and runs, fitted on "
                        "--baseline_data), or both")
    p.add_argument("--baseline_data", default=None,
                   help="H5 episodes (not the evaluated ones) for the k-means baseline and the drift "
                        "reference; default: the training split of --data_dir (none with --split all)")
    p.add_argument("--action_map", default=None,
                   help="action_map.json for the arrow-key check (default: the one beside the dynamics "
                        "checkpoint, or the bundled one)")
    p.add_argument("--key_probes", default=None,
                   help="an H5 file of key probes (genie-env probes): also score the arrow keys from those real "
                        "states against what the real game did there")
    p.add_argument("--action_clips", type=int, default=256,
                   help="clips whose transitions give the LAM's perplexity and agreement with the true actions")
    add_sampler_arguments(p, "for this evaluation")
    p.add_argument("--dtype", default="float32",
                   help="precision of the tokenizer and dynamics model (float32, or bfloat16 to see what it costs)")


# Sampler settings a command may set (eval: for one evaluation; export: in the exported dynamics
# checkpoint): the flag's type, the least it may be, and what it does.
SAMPLER_FLAGS = {
    "commit_noise": (float, 0, "MaskGIT's annealed commit-order noise"),
    "temperature": (float, 0, "MaskGIT sampling temperature (0: greedy)"),
    "maskgit_steps": (int, 1, "MaskGIT passes per frame (fewer step faster; eval shows what that costs)"),
    "sampled_passes": (int, 1, "MaskGIT passes that draw at the temperature; the later ones take each token's "
                               "most probable code"),
    "action_guidance": (float, 0, "action guidance (0: off): each MaskGIT pass also runs a reference action and "
                                  "strengthens what the chosen one changes"),
}
SAMPLER_MINIMUM = {name: least for name, (_, least, _) in SAMPLER_FLAGS.items()}


def add_sampler_arguments(p: argparse.ArgumentParser, where: str) -> None:
    """The sampler flags of :data:`SAMPLER_FLAGS`, each applying ``where``."""
    for name, (kind, _, what) in SAMPLER_FLAGS.items():
        p.add_argument(f"--{name}", type=kind, default=None, help=f"{what}, {where} (default: the checkpoint's)")


def check_sampler(sampler: dict) -> None:
    """Refuse an override below its minimum or not finite (None: keep the checkpoint's), naming the flag."""
    for name, value in sampler.items():
        if value is not None and not (math.isfinite(value) and value >= SAMPLER_MINIMUM[name]):
            raise ValueError(f"--{name} must be a finite number >= {SAMPLER_MINIMUM[name]}, got {value}")


def override_sampler(dynamics, sampler: dict) -> None:
    """Set the given sampler settings on ``dynamics`` for this process only (the file keeps its own)."""
    check_sampler(sampler)
    for name, value in sampler.items():
        if value is not None:
            setattr(dynamics.cfg, name, value)


def run(args: argparse.Namespace) -> int:
    check_positive(args, "clips", "action_clips")
    if args.drift_prompts is None:
        args.drift_prompts = min(8, args.clips)
    check_positive(args, "drift_prompts")
    if args.drift_prompts > args.clips:
        raise ValueError(f"--drift_prompts {args.drift_prompts} exceeds --clips {args.clips}: the drift episode "
                         f"starts from the evaluated clips; give more --clips or fewer --drift_prompts")
    sampler = {name: getattr(args, name) for name in SAMPLER_MINIMUM}
    check_sampler(sampler)
    dev = resolve_device(args.device)
    b = bundled_paths()
    dtype = resolve_dtype(args.dtype, dev)
    tok = load_model(args.tokenizer_path or b["tokenizer"], "tokenizer", dev).to(dtype)
    lam = load_model(args.lam_path or b["lam"], "lam", dev)
    dyn, dyn_stage = load_model_and_config(args.dynamics_path or b["dynamics"], "dynamics", dev)
    dyn = dyn.to(dtype)
    override_sampler(dyn, sampler)
    amap = (json.loads(Path(args.action_map).read_text()) if args.action_map
            else load_action_map(args.dynamics_path))
    probes = load_key_probes(args.key_probes) if args.key_probes else None
    if probes is not None and amap is None:
        raise ValueError("--key_probes needs an arrow-key map: give --action_map or a dynamics checkpoint with "
                         "action_map.json beside it (genie-env export writes one)")
    results = evaluate_world(tok, lam, dyn, args.data_dir, args.out, args.clips, args.clip_len,
                             None if args.split == "all" else args.split, args.seed, horizon=args.horizon,
                             long_steps=args.long_steps, baseline_data=args.baseline_data, action_map=amap,
                             data_config=dyn_stage.data, action_clips=args.action_clips, key_probes=probes,
                             drift_prompts=args.drift_prompts, drift_actions=tuple(dict.fromkeys(args.drift_actions)))
    print(format_table(results))
    return 0
