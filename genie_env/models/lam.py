"""Latent action model (LAM), Genie §2.1: discrete actions learned from unlabeled video.

The encoder sees raw frames x_1..x_{t+1} (causally, so one pass yields every transition) and
emits one continuous vector per transition, quantised to ``num_actions`` codes. That vector is
read from the *change* of the encoder's pooled state from frame t to frame t+1: what the two
frames share cancels, so the code carries the transition rather than the scene (with the state
at t+1 alone, a tiny CoinRun LAM used 2 of its 8 codes; with the change, all 8; docs/design.md). The decoder sees
x_1..x_t plus the action of t -> t+1 as an additive embedding on frame t's patches and predicts
x_{t+1} (with ``residual_decoder``, the change from x_t: a decoder that must redraw the whole
frame from coarse patches barely beats copying it, so small motions such as CoinRun's
one-pixel scroll never pay for a code; docs/design.md); the tiny codebook is the bottleneck
that forces the action to carry only what changes.
At inference only the codebook matters: the dynamics model is conditioned on its indices.
With ``motion_weight`` a linear head on each quantised action must also name which way the whole
scene moved between its two frames (signs of the best global shift, read from the pixels): on
CoinRun the plain codes told jumps from falls but not left from right (docs/design.md). With
``motion_axes: horizontal`` only the sideways sign is asked for; with ``jump`` (a LAM with a
history) the sideways sign and whether the scene began to move down (the camera rose: a jump's
start) in this transition and not in the one before, so a jump keeps a code and its flight and
fall are left to the past; ``side_or_jump`` asks for a jump's start as one class whatever the
sideways move, so a jump need not take two of the eight codes.

A video longer than ``max_frames`` is read in windows of ``max_frames`` frames that overlap by
one (a transition needs both its frames; with ``min_history``, by that many frames more, so each
transition keeps its past), so the LAM labels clips of any length; with
``max_frames: 2`` each action sees only its own two frames (docs/design.md: that LAM's actions
carry more of the true action than one that sees a history, which already shows the motion).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genie_env.config import JUMP_AXES, MOTION_CLASSES, LAMConfig
from genie_env.metrics import global_shifts
from genie_env.models.tokenizer import check_video, patch_encoder, patchify, st_stack, unpatchify
from genie_env.nn.st_transformer import init_weights
from genie_env.nn.vq import VectorQuantizer, code_stats


class LatentActionModel(nn.Module):
    """Video (B, T, C, H, W) in [0, 1] -> latent actions (B, T-1) in [0, num_actions)."""

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        self.grid, patch_dim, self.enc_in, self.encoder = patch_encoder(cfg)
        self.to_action = nn.Linear(cfg.enc_dim, cfg.action_dim)
        self.vq = VectorQuantizer(cfg.num_actions, cfg.action_dim, cfg.commitment, cfg.dead_code_steps,
                                  cfg.kmeans_init)
        self.dec_in = nn.Linear(patch_dim, cfg.dec_dim)
        self.action_in = nn.Linear(cfg.action_dim, cfg.dec_dim)
        self.decoder = st_stack(cfg, cfg.dec_dim, cfg.dec_layers, cfg.dec_heads)
        self.dec_out = nn.Linear(cfg.dec_dim, patch_dim)
        init_weights(self)
        if cfg.residual_decoder:  # start as "the next frame is this one"; the code must earn each change
            nn.init.zeros_(self.dec_out.weight)
        # Reads the quantised action, so the 8 codes themselves must tell the directions apart.
        self.motion_head = nn.Linear(cfg.action_dim, MOTION_CLASSES[cfg.motion_axes]) if cfg.motion_weight > 0 else None

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        """Continuous actions (B, T-1, action_dim) from the change of the pooled encoder state."""
        check_video(video, self.cfg.image_size, self.cfg.in_channels, "LatentActionModel")
        if video.shape[1] < 2:
            raise ValueError(f"the LAM needs at least 2 frames to infer an action, got {video.shape[1]}")
        h = self.encoder(self.enc_in(patchify(video, self.cfg.patch_size))).mean(dim=2)  # (B, T, D)
        return self.to_action(h[:, 1:] - h[:, :-1])

    def decode(self, video: torch.Tensor, action_vectors: torch.Tensor) -> torch.Tensor:
        """Predict frames 2..T from frames 1..T-1 and action vectors (B, T-1, action_dim): as
        pixels in [0, 1], or with ``residual_decoder`` as frame t plus a predicted change (not
        clamped, so that the loss keeps its gradient at the ends of the range)."""
        x = self.dec_in(patchify(video[:, :-1], self.cfg.patch_size))
        x = x + self.action_in(action_vectors)[:, :, None, :]
        out = self.dec_out(self.decoder(x))
        if not self.cfg.residual_decoder:
            return unpatchify(torch.sigmoid(out), self.cfg.patch_size, self.grid, self.cfg.in_channels)
        return video[:, :-1] + unpatchify(out, self.cfg.patch_size, self.grid, self.cfg.in_channels)

    def windows(self, num_frames: int) -> list[tuple[slice, int]]:
        """The frame windows of at most ``max_frames`` frames whose transitions, in order, are
        those of a ``num_frames``-frame video, each with the index of its first transition that
        labels the video: windows overlap by ``min_history`` + 1 frames, and every window after
        the first gives its first ``min_history`` transitions to the window before, so each
        transition after the video's first ``min_history`` is read with that many past frames."""
        w, h = self.cfg.max_frames, self.cfg.min_history
        starts = range(0, max(num_frames - 1 - h, 1), w - 1 - h)
        return [(slice(s, s + w), 0 if s == 0 else h) for s in starts]

    def motion_classes(self, video: torch.Tensor) -> torch.Tensor:
        """The way the scene moved between consecutive frames of ``video`` (B, T, C, H, W), as
        3 x 3 classes (B, T-1) int64: 3 * (vertical sign + 1) + (horizontal sign + 1), the signs
        of the best global shift of at most ``motion_max_shift`` pixels (moved up / left: +1);
        with ``motion_axes: horizontal`` the horizontal sign + 1 alone (the shift is still found
        on both axes, so a fall does not blur the sideways move); with ``jump``
        2 * (horizontal sign + 1) + 1 where the scene moved down in this transition but not in
        the one before (the first transition counts as following a still one); with
        ``side_or_jump`` 3 where such a rise began, whatever the sideways move, else the
        horizontal sign + 1."""
        m = self.cfg.motion_max_shift
        signs = global_shifts(video[:, :-1], video[:, 1:], m, m).sign()  # (B, T-1, 2)
        side = signs[..., 1] + 1
        if self.cfg.motion_axes == "horizontal":
            return side
        if self.cfg.motion_axes in JUMP_AXES:
            rising = signs[..., 0] < 0
            began = rising & ~F.pad(rising[:, :-1], (1, 0), value=False)
            if self.cfg.motion_axes == "side_or_jump":
                return torch.where(began, 3, side)
            return 2 * side + began.long()
        return (signs[..., 0] + 1) * 3 + side

    def _forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        if video.shape[1] < self.cfg.min_history + 2:
            raise ValueError(f"the LAM (min_history {self.cfg.min_history}) trains on clips of at least "
                             f"{self.cfg.min_history + 2} frames, got {video.shape[1]}: raise data.clip_len")
        z_q, actions, vq = self.vq(self._encode(video))
        recon = self.decode(video, z_q.to(video.dtype))
        h = self.cfg.min_history  # transitions with a shorter past are not scored
        recon_loss = F.mse_loss(recon[:, h:].float(), video[:, 1 + h:].float())
        out = {"loss": recon_loss + vq["loss"], "recon_loss": recon_loss, "vq_loss": vq["loss"],
               "perplexity": vq["perplexity"], "usage": vq["usage"], "actions": actions,
               "recon": recon.detach().clamp(0, 1)}
        if self.motion_head is not None:
            logits = self.motion_head(z_q[:, h:].float())  # (B, T-1-h, classes)
            target = self.motion_classes(video)[:, h:]  # the whole clip, so a jump sees the transition before
            out["motion_loss"] = F.cross_entropy(logits.flatten(0, 1), target.flatten())
            out["motion_acc"] = (logits.argmax(-1) == target).float().mean()
            out["loss"] = out["loss"] + self.cfg.motion_weight * out["motion_loss"]
        return out

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass: next-frame reconstruction + VQ (+ motion) loss over the T-1 transitions
        but the first ``min_history`` (in windows when T exceeds ``max_frames``; losses are then
        averaged over the scored transitions, each scored in the window that labels it)."""
        if video.shape[1] <= self.cfg.max_frames:
            return self._forward(video)
        h = self.cfg.min_history
        wins = self.windows(video.shape[1])
        outs = [self._forward(video[:, w]) for w, _ in wins]
        scored = [o["actions"].shape[1] - h for o in outs]
        share = [n / sum(scored) for n in scored]
        keys = ("loss", "recon_loss", "vq_loss") + (("motion_loss", "motion_acc") if self.motion_head is not None else ())
        out = {k: sum(o[k] * s for o, s in zip(outs, share)) for k in keys}
        out["actions"] = torch.cat([o["actions"][:, k:] for o, (_, k) in zip(outs, wins)], dim=1)
        out["recon"] = torch.cat([o["recon"][:, k:] for o, (_, k) in zip(outs, wins)], dim=1)
        return {**out, **code_stats(out["actions"], self.cfg.num_actions)}

    @torch.no_grad()
    def infer_actions(self, video: torch.Tensor) -> torch.Tensor:
        """Latent action indices (B, T-1) int64 for each transition of ``video`` (any T >= 2)."""
        if video.shape[1] < 2:
            raise ValueError(f"the LAM needs at least 2 frames to infer an action, got {video.shape[1]}")
        return torch.cat([self.vq.nearest(self._encode(video[:, w]))[:, k:] for w, k in self.windows(video.shape[1])],
                         dim=1)
