"""Does the dynamics model draw the scene's scroll under any latent action? Issue 9's arrow keys
need some action to scroll CoinRun's scene the way the agent runs; when none does, the fault is
the dynamics model's, not the LAM's labels or the arrow-key map.

On the held-out clips that `genie-env eval` scores (same selection and seed), each next frame is
sampled one step from the real past (as eval's "one step from the real past") under the LAM's
inferred action and under each latent action held constant. Of the consecutive real pairs whose
scene scrolls sideways, it prints the share each prediction scrolls alike (by the same number of
pixels), the share that the best of all actions scrolls alike, and the ceiling (the real next
frame's reconstruction); and, over all pairs, how often each action's prediction scrolls left or
right at all (the real frames' rate beside it).

    python benchmarks/action_scroll.py --data_dir data/coinrun_heldout --tokenizer_path T --lam_path L \\
        --dynamics_path D --maskgit_steps 4 --temperature 0.5
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from genie_env.bundled import bundled_paths
from genie_env.checkpoint import load_model, load_model_and_config
from genie_env.evaluate import clip_sample, override_sampler
from genie_env.metrics import horizontal_scrolls, one_step_predictions, scrolls_beside


@torch.no_grad()
def action_scrolls(tok, lam, dyn, stage, data_dir: str, clips: int, seed: int = 0, batch: int = 16) -> dict:
    """Sideways scrolls (pixels, per consecutive pair) of the real clips, of their reconstruction
    beside each real frame, and of one-step predictions under the inferred and each held action."""
    clip_len = min(dyn.cfg.max_frames, tok.cfg.max_frames)
    val, idx = clip_sample(data_dir, clip_len, tok.cfg.image_size, None, stage.data, clips, seed)
    out: dict = {"real": [], "ceiling": [], "inferred": [], **{a: [] for a in range(dyn.cfg.num_actions)}}
    for start in range(0, len(idx[:clips]), batch):
        video = torch.stack([val[i]["frames"] for i in idx[start:min(start + batch, clips)]])
        n = video.shape[0]
        tokens = tok.encode(video)
        actions = lam(video)["actions"]

        def step(acts):  # the same sampling noise for every action
            gens = [torch.Generator().manual_seed(seed + start + i) for i in range(n)]
            return scrolls_beside(video, one_step_predictions(tok, dyn, tokens, acts, generators=gens))

        out["real"].append(horizontal_scrolls(video))
        out["ceiling"].append(scrolls_beside(video, tok.decode(tokens)[:, 1:]))
        out["inferred"].append(step(actions))
        for a in range(dyn.cfg.num_actions):
            out[a].append(step(torch.full_like(actions, a)))
    return {k: np.concatenate(v).ravel() for k, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="held-out H5 episodes (all of them are used, as eval --split all)")
    p.add_argument("--tokenizer_path", default=None)
    p.add_argument("--lam_path", default=None)
    p.add_argument("--dynamics_path", default=None, help="default: the bundled model's three checkpoints")
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--maskgit_steps", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--temperature", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    b = bundled_paths()
    tok = load_model(args.tokenizer_path or b["tokenizer"], "tokenizer").eval()
    lam = load_model(args.lam_path or b["lam"], "lam").eval()
    dyn, stage = load_model_and_config(args.dynamics_path or b["dynamics"], "dynamics")
    override_sampler(dyn.eval(), {"maskgit_steps": args.maskgit_steps, "temperature": args.temperature})
    s = action_scrolls(tok, lam, dyn, stage, args.data_dir, args.clips, args.seed)
    real = s["real"]
    moving = real != 0
    actions = range(dyn.cfg.num_actions)
    print(f"pairs {real.size}, scrolling sideways {moving.sum()} "
          f"(maskgit_steps {dyn.cfg.maskgit_steps}, temperature {dyn.cfg.temperature:g})")
    if not moving.any():
        print("no pair scrolls: nothing to score")
        return 0
    alike = {k: float(np.mean(s[k][moving] == real[moving])) for k in ("ceiling", "inferred", *actions)}
    best = float(np.mean(np.any([s[a][moving] == real[moving] for a in actions], axis=0)))
    print(f"scroll alike: ceiling (the real next frame's reconstruction) {alike['ceiling']:.3f}, "
          f"inferred actions {alike['inferred']:.3f}, best of the {len(actions)} actions {best:.3f}")
    print(f"real frames: scroll left {np.mean(real > 0):.3f}, right {np.mean(real < 0):.3f} of all pairs")
    for a in actions:
        print(f"action {a}: alike {alike[a]:.3f}; scrolls left {np.mean(s[a] > 0):.3f}, "
              f"right {np.mean(s[a] < 0):.3f} of all pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
