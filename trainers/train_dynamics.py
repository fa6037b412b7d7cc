"""Stage 3: the MaskGIT dynamics model on tokens of the frozen tokenizer, with latent actions.

Sequential (default): the LAM is frozen and only labels transitions. ``--cotrain_lam`` trains
the LAM together with the dynamics model, as the paper does; the dynamics model still takes the
LAM's action indices, so no gradient flows from the dynamics loss into the LAM (stop-grad). The
co-trained LAM is kept inside the dynamics checkpoint and written to ``<out_dir>/lam_cotrained/``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from genie_env.checkpoint import load_model, load_model_and_config, save_checkpoint
from genie_env.config import StageConfig, load_config, stage_from_dict
from genie_env.models import DynamicsModel, LatentActionModel
from genie_env.models.tokenizer import patchify
from trainers.loop import (Task, TrainingError, base_parser, build_datasets, run_cli,
                           spread_clips, stage_from_args, train)
from genie_env.video import side_by_side
from genie_env.world import pair_problems

# Clips whose patches give each code its mean pixel patch (token_pixels): 256 clips of 8 frames
# give each of 1024 codes about 500 patches on average.
PIXEL_CLIPS = 256


def check_compatible(cfg: StageConfig, tok, lam) -> None:
    """Refuse, before any compute, a tokenizer/LAM that does not fit the dynamics config."""
    d, t, a = cfg.model, tok.cfg, lam.cfg
    problems = pair_problems(t, d)
    if a.num_actions != d.num_actions:
        problems.append(f"LAM has {a.num_actions} actions but dynamics num_actions is {d.num_actions}")
    if tuple(a.image_size) != tuple(t.image_size):
        problems.append(f"LAM sees {a.image_size} frames but the tokenizer {t.image_size}")
    if cfg.data.clip_len > t.max_frames:  # the LAM reads longer clips in windows; the tokenizer does not
        problems.append(f"data.clip_len {cfg.data.clip_len} exceeds the tokenizer's max_frames {t.max_frames}")
    if problems:
        raise TrainingError("the tokenizer/LAM checkpoints do not match the dynamics config: "
                            + "; ".join(problems) + ". Fix the dynamics YAML or pass matching checkpoints.")


class CoTrain(nn.Module):
    """LAM + dynamics trained together: one loss, actions passed as indices (stop-grad)."""

    def __init__(self, lam: LatentActionModel, dynamics: DynamicsModel):
        super().__init__()
        self.lam, self.dynamics = lam, dynamics

    def forward(self, frames, tokens, rewards=None, dones=None):
        lam_out = self.lam(frames)
        out = self.dynamics(tokens, lam_out["actions"], rewards, dones)
        out["dynamics_loss"] = out["loss"]
        out["lam_loss"] = lam_out["loss"]
        out["lam_perplexity"] = lam_out["perplexity"]
        out["loss"] = out["loss"] + lam_out["loss"]
        return out


@torch.no_grad()
def code_pixel_means(tokenizer, clips: list[torch.Tensor], batch: int = 16) -> torch.Tensor:
    """Each code's mean pixel patch (num_codes, patch^2 x channels) over the patches that
    ``tokenizer`` gives that code in ``clips`` (each (T, C, H, W) in [0, 1]); codes that never
    occur get the mean of all patches."""
    cfg = tokenizer.cfg
    dev = next(tokenizer.parameters()).device
    sums = torch.zeros(cfg.num_codes, cfg.patch_size ** 2 * cfg.in_channels, dtype=torch.float64)
    counts = torch.zeros(cfg.num_codes, dtype=torch.float64)
    for start in range(0, len(clips), batch):
        video = torch.stack(clips[start:start + batch]).to(dev)
        codes = tokenizer.encode(video).flatten().cpu()
        patches = patchify(video.float(), cfg.patch_size).reshape(codes.numel(), -1).cpu().double()
        sums.index_add_(0, codes, patches)
        counts += torch.bincount(codes, minlength=cfg.num_codes).double()
    if not counts.any():
        raise TrainingError("no clips to measure the codes' pixel patches from")
    means = sums / counts.clamp(min=1)[:, None]
    means[counts == 0] = sums.sum(0) / counts.sum()
    return means.float()


def mirror_clips(frames: torch.Tensor, actions: torch.Tensor, prob: float,
                 pair: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip a random share ``prob`` of the clips ``frames`` (B, T, C, H, W) left-right and swap
    the two latent actions of ``pair`` in their ``actions`` (B, T-1); the draw comes from the
    torch RNG (kept in checkpoints, so a resumed run mirrors the same clips)."""
    if prob <= 0:
        return frames, actions
    flip = torch.rand(frames.shape[0], device=frames.device) < prob
    frames = torch.where(flip[:, None, None, None, None], frames.flip(-1), frames)
    if pair is not None:
        a, b = pair
        swapped = torch.where(actions == a, b, torch.where(actions == b, a, actions))
        actions = torch.where(flip[:, None], swapped, actions)
    return frames, actions


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_task(cfg: StageConfig, tokenizer, lam, cotrain: bool = False, lam_stage: StageConfig | None = None,
              code_pixels: torch.Tensor | None = None) -> Task:
    """``code_pixels``: the codes' mean pixel patches, required when the config sets ``token_pixels``."""
    if cotrain and cfg.model.rollout_prob > 0:
        raise TrainingError("rollout_prob trains on the dynamics model's own rollouts under the frozen LAM's "
                            "actions; it cannot be used with --cotrain_lam. Set model.rollout_prob: 0 or train "
                            "with a frozen LAM.")
    if cotrain and cfg.model.hflip_prob > 0:
        raise TrainingError("hflip_prob mirrors clips with the frozen LAM's actions; it cannot be used with "
                            "--cotrain_lam. Set model.hflip_prob: 0 or train with a frozen LAM.")
    torch.manual_seed(cfg.train.seed)
    dyn = DynamicsModel(cfg.model)
    if cfg.model.token_pixels:
        if code_pixels is None:
            raise TrainingError("token_pixels is set: pass the codes' pixel patches (code_pixel_means)")
        dyn.set_code_pixels(code_pixels)
    tokenizer = _frozen(tokenizer)
    if not cotrain:
        lam = _frozen(lam)
    module = CoTrain(lam, dyn) if cotrain else dyn

    # The frozen tokenizer and LAM label the data in float32 even under bf16 autocast: that is
    # how inference runs them, and bf16 would hand the model other tokens and actions.
    def encode(frames):
        with torch.autocast(frames.device.type, enabled=False):
            return tokenizer.encode(frames)

    def actions_of(frames):
        with torch.autocast(frames.device.type, enabled=False):
            return lam.infer_actions(frames)

    def loss(m, batch):
        frames = batch["frames"]
        if cotrain:
            return m(frames, encode(frames), batch.get("rewards"), batch.get("dones"))
        # The LAM labels the clip as recorded; a mirrored clip takes the mirrored labels.
        frames, actions = mirror_clips(frames, actions_of(frames), cfg.model.hflip_prob, cfg.model.mirror_actions)
        tokens, rewards, dones = encode(frames), batch.get("rewards"), batch.get("dones")
        if cfg.model.rollout_prob > 0 and float(torch.rand(())) < cfg.model.rollout_prob:
            # A step on the model's own past: the clip without its first frame, whose visible
            # past is what the model made of it (called through m, so DDP still syncs).
            past = dyn.own_past(tokens, actions)
            rewards, dones = (None if x is None else x[:, 1:] for x in (rewards, dones))
            return m(tokens[:, 1:], actions[:, 1:], rewards, dones, past=past)
        return m(tokens, actions, rewards, dones)

    def validate(m, batch):
        frames = batch["frames"]
        model = m.dynamics if cotrain else m
        rate = torch.full((frames.shape[0],), 0.75, device=frames.device)
        out = model(encode(frames), actions_of(frames), batch.get("rewards"), batch.get("dones"),
                    mask_rate=rate)
        return {k: out[k] for k in ("ce", "masked_acc", "reward_loss", "done_loss") if k in out}

    def visualize(m, batch):
        model = m.dynamics if cotrain else m
        frames = batch["frames"][:1]
        gen = model.generate(encode(frames)[:, :1], actions_of(frames))
        with torch.autocast(frames.device.type, enabled=False):
            return side_by_side(frames[0], tokenizer.decode(gen)[0])

    task = Task(cfg, module, loss=loss, validate=validate, visualize=visualize, checkpoint_model=dyn,
                frozen=(tokenizer,) if cotrain else (tokenizer, lam))
    if cotrain:
        task.extra_state = lambda: {"cotrain_lam": {"config": lam_stage.to_dict(), "model": lam.state_dict()}}
        task.load_extra_state = lambda extra: lam.load_state_dict(extra["cotrain_lam"]["model"])
    return task


def parser():
    p = base_parser("dynamics")
    p.add_argument("--tokenizer_path", required=True, help="trained tokenizer checkpoint (frozen)")
    p.add_argument("--lam_path", default=None, help="trained LAM checkpoint (frozen unless --cotrain_lam)")
    p.add_argument("--cotrain_lam", action="store_true",
                   help="train the LAM with the dynamics model (the paper's setup)")
    p.add_argument("--lam_config", default=None,
                   help="with --cotrain_lam and no --lam_path: the LAM YAML to start from")
    return p


def main(args) -> Path:
    cfg = stage_from_args(args, "dynamics")
    tokenizer = load_model(args.tokenizer_path, kind="tokenizer")
    lam_stage = None
    if args.lam_path:
        lam, lam_stage = load_model_and_config(args.lam_path, kind="lam")
    elif args.cotrain_lam and args.lam_config:
        lam_stage = load_config(args.lam_config)
        lam = LatentActionModel(lam_stage.model)
    else:
        raise TrainingError("--lam_path is required (or --cotrain_lam with --lam_config to train a LAM from scratch)")
    if args.cotrain_lam:
        lam.train()
    check_compatible(cfg, tokenizer, lam)
    if cfg.model.reward_head or cfg.model.token_pixels:
        train_ds, _ = build_datasets(cfg, args.data_dir, tokenizer.cfg.image_size)
    if cfg.model.reward_head and not (train_ds.has_rewards and "dones" in train_ds[0]):
        raise TrainingError(f"reward_head is true but the data in {args.data_dir} has no rewards/dones; "
                            "set model.reward_head: false or collect data with rewards")
    code_pixels = None
    if cfg.model.token_pixels:
        # On a resume the checkpoint's copy replaces these (the same numbers: same clips, same tokenizer).
        code_pixels = code_pixel_means(tokenizer.eval(), spread_clips(train_ds, PIXEL_CLIPS))
    task = make_task(cfg, tokenizer, lam, args.cotrain_lam, lam_stage, code_pixels)
    path = train(task, args.data_dir, args.device, args.out_dir, args.resume, image_size=tokenizer.cfg.image_size)
    if args.cotrain_lam and int(os.environ.get("RANK", "0")) == 0:
        out = Path(args.out_dir or cfg.train.out_dir) / "lam_cotrained" / "latest.pt"
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        lam_cfg = stage_from_dict(ckpt["extra"]["cotrain_lam"]["config"])
        lam.load_state_dict(ckpt["extra"]["cotrain_lam"]["model"])
        save_checkpoint(out, lam, lam_cfg, step=ckpt["step"], include_rng=False)
    return path


if __name__ == "__main__":
    sys.exit(run_cli(main, parser()))
