"""Long-episode drift under three kinds of random latent actions: is the drift the dynamics
model's errors, or what uniformly random latent actions ask of it?

eval's drift figure steps a world under latent actions drawn uniformly. CoinRun's random
player does not produce them uniformly: its frames, labelled by the world's own LAM, use some
codes far more than others, and in runs (a jump's codes are followed by a fall's). This script
starts eval's drift prompts (the same draw, ``--seed``; eval with ``--split all
--baseline_data STATS``) and steps the world under

- ``uniform``: eval's actions, each code one time in 8 (eval's "drift" figures);
- ``marginal``: codes drawn independently with the frequencies the LAM gives the transitions of
  ``--stats_dir`` episodes (not the held-out ones);
- ``data``: the first-order chain of codes fitted to the same transitions (each code drawn
  given the one before, so runs of codes look like the recorded player's): eval's
  ``--drift_actions data`` figures;

and, with ``--replay_steps N``, under the codes the LAM reads from real held-out episodes of at
least N + 1 frames, from each episode's first frame (``replay``: the recorded player's actions
where the recorded player took them, so a fall only where the real agent fell), scored also
against the real frame of the same step;

and reports eval's colour distance to the nearest real frame at each checkpoint, the share of
each code the episode used, what each code does to the real frames (the mean global shift of
the pairs the LAM gives it) and the drift picture of each mode.

    python benchmarks/drift_actions.py --world worlds/w26 --data_dir data/coinrun_heldout \\
        --stats_dir data/coinrun_v2 --prompts 32 --steps 500 --out eval/drift_w26
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from genie_env.bundled import bundled_paths
from genie_env.checkpoint import load_model
from genie_env.data.h5 import ClipDataset
from genie_env.evaluate import CHAIN_CLIP_LEN, action_chain, clip_sample, drift
from genie_env.metrics import colour_histograms, global_shifts, nearest_histogram_distance, psnr_per_frame
from genie_env.video import write_grid
from genie_env.world import World


@torch.no_grad()
def code_motion(lam, ds: ClipDataset, clips: int, seed: int) -> dict:
    """For each LAM code: its share of ``clips`` clips' transitions and the mean global shift
    (pixels the scene moved up, left; :func:`global_shifts`, at most 3 each way) of those pairs."""
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed + 1))[:clips].tolist()
    codes, shifts = [], []
    for start in range(0, len(pick), 16):
        video = torch.stack([ds[i]["frames"] for i in pick[start:start + 16]])
        codes.append(lam.infer_actions(video).flatten())
        shifts.append(global_shifts(video[:, :-1], video[:, 1:], 3, 3).reshape(-1, 2).float())
    codes, shifts = torch.cat(codes), torch.cat(shifts)
    return {int(a): {"share": round(float((codes == a).float().mean()), 3),
                     "scene up, left (px)": [round(float(v), 2) for v in shifts[codes == a].mean(dim=0)]}
            for a in range(lam.cfg.num_actions) if (codes == a).any()}


@torch.no_grad()
def replay(tok, lam, dyn, data_dir, reference, episodes: int, steps: int, seed: int, frames_at: dict) -> dict:
    """Step the world from the first frames of ``episodes`` held-out episodes (drawn by ``seed``
    among those of at least ``steps`` + 1 frames) under the LAM's codes for their recorded
    transitions; at each checkpoint, the colour distance to the nearest ``reference`` frame (as
    eval's drift), the same for the real frames of that step, the distance between the two
    frames' colours, and the world's PSNR against the real frame beside repeating the prompt's."""
    ds = ClipDataset(data_dir, clip_len=steps + 1, image_size=tok.cfg.image_size)
    starts = {(i, a) for i, a, _ in ds.episodes}
    firsts = [k for k, clip in enumerate(ds.index) if clip in starts]  # each episode's first clip
    pick = [firsts[j] for j in torch.randperm(len(firsts), generator=torch.Generator().manual_seed(seed))[:episodes]]
    video = torch.stack([ds[k]["frames"] for k in pick])  # (E, steps + 1, 3, H, W)
    codes = lam.infer_actions(video)
    world = World(tok, dyn, len(pick))
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(pick))]
    frames_at[0] = world.reset(video[:, 0])
    ref = colour_histograms(reference)
    out = {"episodes": len(pick)}
    for t in range(1, steps + 1):
        frames = world.step(codes[:, t - 1], generators=gens).frames
        if t in (1, 10, 50, 100, 150, 200, 250, steps):
            frames_at[t] = frames
            real = video[:, t]
            pair = 0.5 * (colour_histograms(frames) - colour_histograms(real)).abs().sum(dim=1)
            out[t] = {"world": round(float(nearest_histogram_distance(frames, ref).mean()), 4),
                      "real frames": round(float(nearest_histogram_distance(real, ref).mean()), 4),
                      "world vs the real frame": round(float(pair.mean()), 4),
                      "PSNR vs the real frame (dB)": round(float(psnr_per_frame(frames[:, None], real[:, None]).mean()), 2),
                      "repeat-the-prompt PSNR (dB)": round(float(psnr_per_frame(video[:, :1], real[:, None]).mean()), 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default=None, help="a folder with tokenizer.pt, lam.pt, dynamics.pt (default: bundled)")
    p.add_argument("--data_dir", required=True, help="held-out episodes: the prompts (eval's draw)")
    p.add_argument("--stats_dir", required=True, help="other episodes: the reference frames and the action statistics")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", nargs="*", default=["uniform", "marginal", "data"], choices=["uniform", "marginal", "data"])
    p.add_argument("--replay_steps", type=int, default=0,
                   help="also step --prompts real held-out episodes of more frames under their own codes (0: skip)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    paths = bundled_paths() if args.world is None else {k: Path(args.world) / f"{k}.pt" for k in ("tokenizer", "lam", "dynamics")}
    tok = load_model(paths["tokenizer"], kind="tokenizer")
    lam = load_model(paths["lam"], kind="lam")
    dyn = load_model(paths["dynamics"], kind="dynamics")
    size = tok.cfg.image_size
    played = ClipDataset(args.stats_dir, clip_len=CHAIN_CLIP_LEN, image_size=size)
    freq, chain = action_chain(lam, played, seed=args.seed)  # as eval fits it
    chains = {"uniform": None, "marginal": (freq, freq.expand_as(chain)), "data": (freq, chain)}
    # eval's draw of prompts, reference and real frames (evaluate_world, --split all, --baseline_data)
    clip_len = min(dyn.cfg.max_frames, tok.cfg.max_frames)
    val, idx = clip_sample(args.data_dir, clip_len, size, None, None, max(args.prompts, 256), args.seed)
    prompts = torch.stack([val[i]["frames"][0] for i in idx[:args.prompts]])
    real = torch.stack([val[i]["frames"][-1] for i in idx[:max(args.prompts, 64)]])
    base = ClipDataset(args.stats_dir, clip_len=1, image_size=size)
    pick = torch.randperm(len(base), generator=torch.Generator().manual_seed(args.seed))[:128].tolist()
    reference = torch.stack([base[i]["frames"][0] for i in pick])
    result = {"world": args.world or "bundled", "prompts": args.prompts, "seed": args.seed,
              "code frequencies": [round(float(x), 3) for x in freq],
              "P(same code next)": [round(float(x), 3) for x in chain.diagonal()],
              "codes on real frames": code_motion(lam, played, 96, args.seed)}
    print(json.dumps(result), flush=True)
    for mode in args.modes:
        t0 = time.time()
        frames_at: dict = {}
        out = drift(World(tok, dyn, args.prompts), prompts, reference, real, args.steps, args.seed,
                    frames_at=frames_at, chain=chains[mode])
        result[mode] = {"colour distance by step": {k.rsplit(" ", 1)[1]: round(v, 4) for k, v in out.items()
                                                    if "at step" in k},
                        "real frames": round(out["drift: real held-out frames' colour distance"], 4),
                        "seconds": round(time.time() - t0)}
        print(mode, json.dumps(result[mode]), flush=True)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            write_grid(Path(args.out) / f"drift_{mode}.png",
                       torch.stack([frames_at[t][:8] for t in sorted(frames_at)], dim=1))
    if args.replay_steps > 0:
        t0 = time.time()
        frames_at = {}
        result["replay"] = replay(tok, lam, dyn, args.data_dir, reference, args.prompts, args.replay_steps,
                                  args.seed, frames_at)
        result["replay"]["seconds"] = round(time.time() - t0)
        print("replay", json.dumps(result["replay"]), flush=True)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            write_grid(Path(args.out) / "drift_replay.png",
                       torch.stack([frames_at[t][:8] for t in sorted(frames_at)], dim=1))
    if args.out:
        (Path(args.out) / "drift_actions.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
