"""Dynamics model: MaskGIT over tokenizer tokens on the ST-transformer (Genie §2.1).

Reading chosen (see docs/design.md): **in-place** prediction, as every public re-implementation
does. Frame 1 is never masked; the latent action of transition t -> t+1 is added to frame t+1's
token embeddings, and the model fills frame t+1's masked tokens in place. Frame 1 carries a
learned "no action" embedding (index ``num_actions``). Actions are indices, so nothing flows
back into the LAM (the paper's stop-gradient).

Training masks the tokens of frames 2..T with a Bernoulli rate drawn uniformly in
[mask_rate_min, mask_rate_max] **per sample**, with cross-entropy on the masked positions
(``changed_token_weight`` weighs up those whose token differs from the frame before). A
share ``clean_prefix_prob`` of the samples instead keeps frames 1..c-1 clean and masks only
frames c..T (c drawn uniformly in 2..T), the clean-past state that every decode at inference
starts from. ``context_noise`` replaces a share of the visible tokens with random codes, so
that the model learns to read a past that carries errors, as its own rollouts do;
``rollout_prob`` instead shows it a past that is its own rollout (:meth:`own_past`, passed as
``past``) with the recorded frames as targets. The optional
reward/termination heads read a second, gradient-free pass over the clean clip (as at
inference), so they train only themselves and cannot pull on the shared trunk.

Generation (``sample_next``) runs ``maskgit_steps`` passes over the new frame only, against the
temporal KV cache of the past, with random sampling at ``temperature`` and a cosine schedule
that commits the most confident samples first; ``observe`` then adds the finished frame to the
cache. Every random number is drawn per batch row (one ``torch.Generator`` per row may be
given), so a row's result does not depend on what else is in the batch.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genie_env.config import DynamicsConfig
from genie_env.nn.st_transformer import STTransformer, TemporalKVCache, init_weights


def changed_token_loss(ce_each: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                       weight: float) -> torch.Tensor:
    """Mean of the masked tokens' losses ``ce_each`` (in ``mask`` order; tokens (B, T, N)) with
    each token that differs from the one before it in time weighted ``weight`` times."""
    # Concatenated, not assigned into a zeros tensor's slice: inductor's CPU code for that (then
    # indexed by the mask) did not compile (torch 2.13), so training with --compile failed
    # whenever the weight was set.
    changed = torch.cat([torch.zeros_like(mask[:, :1]), tokens[:, 1:] != tokens[:, :-1]], dim=1)
    w = 1.0 + (weight - 1.0) * changed[mask].float()
    return (w * ce_each).sum() / w.sum()


def maskgit_sample(logits_fn: Callable[[torch.Tensor], torch.Tensor], batch: int, num_tokens: int,
                   mask_id: int, steps: int, temperature: float, device,
                   generators: Sequence[torch.Generator] | None = None,
                   commit_noise: float = 0.0, sampled_passes: int | None = None) -> torch.Tensor:
    """Decode one frame's tokens (B, N) from all-masked input in ``steps`` MaskGIT passes.

    ``logits_fn(tokens (B, N)) -> logits (B, N, V)``. At each pass every still-masked position
    draws a token from softmax(logits / temperature) (argmax when temperature is 0); the draws
    with the highest probability are committed and the rest stay masked, following
    n_masked = floor(N cos(pi/2 * k/steps)), so the last pass commits everything. With
    ``commit_noise`` > 0 the commit order ranks log-probability plus Gumbel noise of scale
    ``commit_noise * (1 - (k+1)/steps)`` (the original MaskGIT's annealed choice), drawn from each
    row's generator after its sampling uniforms. With ``sampled_passes`` set, only the first that
    many passes draw; the later ones take the argmax (the uniforms are drawn for every pass all the
    same, so a row's random stream does not depend on it).

    The schedule is computed on the host and each row's uniforms for all passes are drawn at
    once (one call per row and frame), so a decode never waits on the device mid-frame.
    """
    if steps < 1:
        raise ValueError(f"maskgit steps must be >= 1, got {steps}")
    if generators is not None and len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
    tokens = torch.full((batch, num_tokens), mask_id, dtype=torch.long, device=device)
    masked = torch.ones(batch, num_tokens, dtype=torch.bool, device=device)

    def per_row_uniforms() -> torch.Tensor:
        # (steps, B, N): one uniform per token and pass, each row's from its own generator.
        if generators is None:
            return torch.rand(steps, batch, num_tokens, device=device)
        return torch.stack([torch.rand(steps, num_tokens, generator=g, device=device) for g in generators], dim=1)

    if temperature > 0:
        uniforms = per_row_uniforms()
    if commit_noise > 0:
        gumbel = -torch.log(-torch.log(per_row_uniforms().clamp(1e-20, 1 - 1e-7)))
    n_masked_now = num_tokens  # the schedule is the same for every row
    for k in range(steps):
        logits = logits_fn(tokens).float()
        if temperature > 0 and (sampled_passes is None or k < sampled_passes):
            probs = torch.softmax(logits / temperature, dim=-1)
            # Inverse-CDF sampling of each token from its uniform.
            cdf = probs.cumsum(dim=-1)
            sampled = torch.searchsorted(cdf, uniforms[k].unsqueeze(-1)).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
        else:
            probs = torch.softmax(logits, dim=-1)
            sampled = logits.argmax(dim=-1)
        confidence = probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        if commit_noise > 0:
            confidence = confidence.clamp(min=1e-30).log() + commit_noise * (1 - (k + 1) / steps) * gumbel[k]
        confidence = confidence.masked_fill(~masked, float("inf"))
        n_keep_masked = math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / steps))
        n_keep_masked = max(0, min(n_keep_masked, n_masked_now - 1))
        n_masked_now = n_keep_masked
        order = confidence.argsort(dim=-1)  # least confident first
        still_masked = torch.zeros_like(masked)
        still_masked.scatter_(1, order[:, :n_keep_masked], True)
        commit = masked & ~still_masked
        tokens = torch.where(commit, sampled, tokens)
        masked = still_masked
    return tokens


class DynamicsModel(nn.Module):
    """Tokens (B, T, N) + latent actions (B, T-1) -> next-frame token logits."""

    def __init__(self, cfg: DynamicsConfig):
        super().__init__()
        self.cfg = cfg
        self.num_tokens = cfg.token_grid[0] * cfg.token_grid[1]
        self.mask_id = cfg.vocab_size
        self.no_action = cfg.num_actions
        self.token_emb = nn.Embedding(cfg.vocab_size + 1, cfg.d_model)
        self.action_emb = nn.Embedding(cfg.num_actions + 1, cfg.d_model)
        self.transformer = STTransformer(cfg.d_model, cfg.num_layers, cfg.num_heads, self.num_tokens,
                                         cfg.max_frames, qk_dim=cfg.qk_dim, mlp_ratio=cfg.mlp_ratio,
                                         qk_norm=cfg.qk_norm, grad_checkpointing=cfg.grad_checkpointing)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        if cfg.token_pixels:
            # Row v: code v's mean pixel patch, standardized over the codes (set_code_pixels); the
            # mask token's row stays zero.
            self.register_buffer("code_pixels", torch.zeros(cfg.vocab_size + 1, cfg.token_pixels))
            self.pixels_in = nn.Linear(cfg.token_pixels, cfg.d_model)
            self.pixels_out = nn.Linear(cfg.d_model, cfg.token_pixels)
        if cfg.reward_head:
            # r_t, done_t of the transition out of frame t, from frame t's state and the action.
            self.head_action_emb = nn.Embedding(cfg.num_actions + 1, cfg.d_model)
            self.reward_done = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(),
                                             nn.Linear(cfg.d_model, 2))
        init_weights(self)

    def set_code_pixels(self, pixels: torch.Tensor) -> None:
        """Each code's mean pixel patch (vocab_size, token_pixels), e.g. from the trainer's
        ``code_pixel_means``; kept standardized per pixel so that the embedding and the logits start small."""
        if not self.cfg.token_pixels:
            raise ValueError("this dynamics config has token_pixels: 0; set it to use code pixels")
        want = (self.cfg.vocab_size, self.cfg.token_pixels)
        if tuple(pixels.shape) != want:
            raise ValueError(f"code pixels must have shape {want}, got {tuple(pixels.shape)}")
        pixels = pixels.double()
        pixels = (pixels - pixels.mean(0)) / pixels.std(0).clamp(min=1e-3)
        self.code_pixels[:-1] = pixels.to(self.code_pixels)

    def token_embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Input embedding of token indices (the mask id included) -> (..., d_model)."""
        x = self.token_emb(tokens)
        if self.cfg.token_pixels:
            x = x + self.pixels_in(self.code_pixels[tokens])
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits (..., vocab_size) from hidden states (..., d_model); with
        ``token_pixels``, plus a predicted pixel patch's dot product with each code's patch, so
        that codes that look alike score alike."""
        out = self.head(h)
        if self.cfg.token_pixels:
            out = out + self.pixels_out(h) @ self.code_pixels[:-1].T
        return out

    def _check(self, tokens: torch.Tensor, actions: torch.Tensor) -> None:
        b, t = tokens.shape[:2]
        if tokens.ndim != 3 or tokens.shape[2] != self.num_tokens:
            raise ValueError(f"DynamicsModel expects tokens (B, T, {self.num_tokens}), got {tuple(tokens.shape)}")
        if tuple(actions.shape) != (b, t - 1):
            raise ValueError(f"expected actions of shape ({b}, {t - 1}) for {t} frames, got {tuple(actions.shape)}")
        if actions.numel() and (actions.min() < 0 or actions.max() >= self.cfg.num_actions):
            raise ValueError(f"actions must lie in [0, {self.cfg.num_actions}), got "
                             f"[{int(actions.min())}, {int(actions.max())}]")

    def _frame_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Per-frame action input (B, T): 'no action' for frame 1, a_{t-1} for frame t."""
        first = torch.full_like(actions[:, :1], self.no_action)
        return torch.cat([first, actions], dim=1)

    def embed(self, tokens: torch.Tensor, frame_actions: torch.Tensor) -> torch.Tensor:
        return self.token_embed(tokens) + self.action_emb(frame_actions).unsqueeze(-2)

    def forward(self, tokens: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor | None = None,
                dones: torch.Tensor | None = None, mask_rate: torch.Tensor | None = None,
                past: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training pass. tokens (B, T, N) int64, actions (B, T-1) int64.

        ``rewards``/``dones`` (B, T) (transition out of each frame) train the optional heads.
        ``mask_rate`` (B,) overrides the per-sample rate drawn from [mask_rate_min, mask_rate_max].
        ``past`` (B, C, N), C < T, is what the model sees of frames 1..C instead of ``tokens``
        (its own rollout, :meth:`own_past`); those frames are never masked, so the loss is on the
        later frames' targets in ``tokens`` alone.
        """
        self._check(tokens, actions)
        if past is not None and not (past.shape[0] == tokens.shape[0] and past.shape[2] == tokens.shape[2]
                                     and 1 <= past.shape[1] < tokens.shape[1]):
            raise ValueError(f"past must be (B, C, N) with 1 <= C < T for tokens {tuple(tokens.shape)}, "
                             f"got {tuple(past.shape)}")
        actions = actions.detach()
        b, t, n = tokens.shape
        if mask_rate is None:
            lo, hi = self.cfg.mask_rate_min, self.cfg.mask_rate_max
            mask_rate = lo + (hi - lo) * torch.rand(b, device=tokens.device)
        mask = torch.rand(b, t, n, device=tokens.device) < mask_rate[:, None, None]
        mask[:, 0] = False
        if self.cfg.clean_prefix_prob > 0 and t > 1:
            prefix = torch.rand(b, device=tokens.device) < self.cfg.clean_prefix_prob
            cut = torch.randint(1, t, (b,), device=tokens.device)  # first masked frame (0-based)
            frame = torch.arange(t, device=tokens.device)
            clean = prefix[:, None] & (frame[None, :] < cut[:, None])  # (B, T)
            mask &= ~clean[:, :, None]
        if past is not None:
            mask[:, :past.shape[1]] = False
        frame_actions = self._frame_actions(actions)
        inputs = frame_actions
        if self.training and self.cfg.action_dropout > 0:
            dropped = torch.rand(frame_actions.shape, device=tokens.device) < self.cfg.action_dropout
            inputs = frame_actions.masked_fill(dropped, self.no_action)
        visible = tokens if past is None else torch.cat([past, tokens[:, past.shape[1]:]], dim=1)
        if self.training and self.cfg.context_noise > 0:
            share = self.cfg.context_noise * torch.rand(b, 1, 1, device=tokens.device)
            noisy = (torch.rand(b, t, n, device=tokens.device) < share) & ~mask
            visible = torch.where(noisy, torch.randint_like(tokens, self.cfg.vocab_size), visible)
        h = self.transformer(self.embed(visible.masked_fill(mask, self.mask_id), inputs))
        logits = self.logits(h)
        if mask.any():
            ce_each = F.cross_entropy(logits[mask].float(), tokens[mask], reduction="none")
            ce = ce_each.mean()
            loss = ce
            if self.cfg.changed_token_weight != 1.0:
                loss = changed_token_loss(ce_each, tokens, mask, self.cfg.changed_token_weight)
            with torch.no_grad():
                acc = (logits[mask].argmax(-1) == tokens[mask]).float().mean()
        else:
            ce = loss = acc = logits.sum() * 0
        out = {"loss": loss, "ce": ce, "masked_acc": acc, "mask_rate": mask_rate, "mask": mask,
               "logits": logits.detach()}
        if self.cfg.reward_head and rewards is not None and dones is not None:
            with torch.no_grad():
                h_clean = self.transformer(self.embed(tokens, frame_actions))
            head_actions = torch.cat([actions, torch.full_like(actions[:, :1], self.no_action)], dim=1)
            reward, done_logit = self._reward_done(h_clean, head_actions)
            out["reward_loss"] = F.mse_loss(reward, rewards.float() / self.cfg.reward_scale)
            out["done_loss"] = F.binary_cross_entropy_with_logits(done_logit, dones.float())
            out["loss"] = loss + out["reward_loss"] + out["done_loss"]
        return out

    @torch.no_grad()
    def own_past(self, tokens: torch.Tensor, actions: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """The model's own rollout of a clip (``rollout_prob``): frames 2..1+``frames`` (B, frames, N)
        decoded from the clip's first frame (tokens (B, T, N)) under its actions (B, T-1) by the
        inference sampler, in eval mode. ``frames`` (default drawn uniformly in 1..T-2 from the
        torch RNG) leaves at least one recorded frame after it as a target."""
        self._check(tokens, actions)
        t = tokens.shape[1]
        if t < 3:
            raise ValueError(f"training on the model's own past needs clips of 3 or more frames, got {t}")
        if frames is None:
            frames = int(torch.randint(1, t - 1, ()))
        if not 1 <= frames <= t - 2:
            raise ValueError(f"frames must be in [1, {t - 2}] for clips of {t} frames, got {frames}")
        was_training = self.training
        self.eval()
        try:
            return self.generate(tokens[:, :1], actions[:, :frames])[:, 1:]
        finally:
            self.train(was_training)

    def _reward_done(self, h: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = h.mean(dim=-2) + self.head_action_emb(actions)
        r, d = self.reward_done(x).float().unbind(-1)
        return r, d

    # ---- generation -------------------------------------------------------------------------

    def new_cache(self, batch: int, device=None, dtype=None) -> TemporalKVCache:
        return self.transformer.new_cache(batch, device, dtype)

    @torch.no_grad()
    def observe(self, cache: TemporalKVCache, tokens: torch.Tensor, prev_action: torch.Tensor | None) -> torch.Tensor:
        """Add a known frame's tokens (B, N) to the cache; ``prev_action`` (B,) led to it
        (None for an episode's first frame). Returns the frame's hidden state (B, N, D)."""
        if prev_action is None:
            prev_action = torch.full((tokens.shape[0],), self.no_action, dtype=torch.long, device=tokens.device)
        return self.transformer.step(self.embed(tokens, prev_action), cache, commit=True)

    @torch.no_grad()
    def sample_next(self, cache: TemporalKVCache, action: torch.Tensor, steps: int | None = None,
                    temperature: float | None = None,
                    generators: Sequence[torch.Generator] | None = None,
                    guidance: float | None = None) -> torch.Tensor:
        """Tokens (B, N) of the frame that ``action`` (B,) leads to from the cached past.

        The cache is not changed: call :meth:`observe` with the result to commit it. ``steps``,
        ``temperature`` and ``guidance`` (action guidance) default to the config's.
        """
        act = self.action_emb(action).unsqueeze(-2)
        g = self.cfg.action_guidance if guidance is None else guidance
        # With guidance each pass runs the rows twice (under the action, under the mean action)
        # in one batch, so the cache is read through a copy that holds every row twice.
        past = cache if g == 0 else cache.subset(torch.arange(action.shape[0], device=action.device).repeat(2))

        def logits_fn(tok: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
            return self.logits(self.transformer.step(self.token_embed(tok) + act, past, commit=False))

        return maskgit_sample(
            self._guided(logits_fn, act, g), action.shape[0], self.num_tokens, self.mask_id,
            steps or self.cfg.maskgit_steps, self.cfg.temperature if temperature is None else temperature,
            action.device, generators, self.cfg.commit_noise, self.cfg.sampled_passes)

    def _guided(self, logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], act: torch.Tensor,
                g: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """MaskGIT's ``logits_fn(tokens (B, N))`` from ``logits_fn(tokens, action embeddings (B, 1, D))``;
        with action guidance g > 0, (1 + g) log p(. | action) - g log p(. | reference), both from
        one call on the rows stacked twice (2B). The reference is the "no action" embedding of a
        model trained with action dropout, else the mean of the action embeddings."""
        if g == 0:
            return lambda tok: logits_fn(tok, act)
        if self.cfg.action_dropout > 0:
            ref_act = self.action_emb.weight[self.no_action]
        else:
            ref_act = self.action_emb.weight[: self.cfg.num_actions].mean(0)
        both = torch.cat([act, ref_act.expand_as(act)])

        def guided(tok: torch.Tensor) -> torch.Tensor:
            cond, ref = torch.log_softmax(logits_fn(tok.repeat(2, 1), both).float(), dim=-1).chunk(2)
            return (1 + g) * cond - g * ref

        return guided

    @torch.no_grad()
    def sample_next_uncached(self, tokens: torch.Tensor, actions: torch.Tensor, action: torch.Tensor,
                             steps: int | None = None, temperature: float | None = None,
                             generators: Sequence[torch.Generator] | None = None,
                             guidance: float | None = None) -> torch.Tensor:
        """As :meth:`sample_next`, but recomputing the whole context (B, t, N) at every pass.

        The reference that the cache must match, and the baseline the benchmarks compare with.
        """
        frame_actions = self._frame_actions(torch.cat([actions, action[:, None]], dim=1))
        past = self.action_emb(frame_actions[:, :-1]).unsqueeze(-2)  # (B, t, 1, D)

        def logits_fn(tok: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
            reps = tok.shape[0] // tokens.shape[0]  # 2 with guidance: the rows stacked twice
            x = torch.cat([tokens.repeat(reps, 1, 1), tok[:, None]], dim=1)[:, -self.cfg.max_frames:]
            acts = torch.cat([past.repeat(reps, 1, 1, 1), act[:, None]], dim=1)[:, -x.shape[1]:]
            return self.logits(self.transformer(self.token_embed(x) + acts)[:, -1])

        g = self.cfg.action_guidance if guidance is None else guidance
        return maskgit_sample(self._guided(logits_fn, self.action_emb(action).unsqueeze(-2), g),
                              action.shape[0], self.num_tokens, self.mask_id, steps or self.cfg.maskgit_steps,
                              self.cfg.temperature if temperature is None else temperature,
                              action.device, generators, self.cfg.commit_noise, self.cfg.sampled_passes)

    @torch.no_grad()
    def predict_reward_done(self, hidden: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Learned reward (B,) and termination probability (B,) of taking ``action`` in the frame
        whose hidden state :meth:`observe` returned. Needs ``reward_head: true``."""
        if not self.cfg.reward_head:
            raise RuntimeError("this dynamics model was trained without reward/termination heads")
        r, d = self._reward_done(hidden, action)
        return r * self.cfg.reward_scale, torch.sigmoid(d)

    @torch.no_grad()
    def generate(self, prompt_tokens: torch.Tensor, actions: torch.Tensor,
                 prompt_actions: torch.Tensor | None = None, steps: int | None = None,
                 temperature: float | None = None,
                 generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Roll out: prompt tokens (B, T0, N) then one frame per action in ``actions`` (B, K).

        ``prompt_actions`` (B, T0-1) are the latent actions between prompt frames (needed when
        T0 > 1). Returns tokens (B, T0 + K, N). Uses the KV cache; the window slides past
        ``max_frames``.
        """
        b, t0, _ = prompt_tokens.shape
        if t0 > 1 and (prompt_actions is None or tuple(prompt_actions.shape) != (b, t0 - 1)):
            raise ValueError(f"a prompt of {t0} frames needs prompt_actions of shape ({b}, {t0 - 1})")
        if actions.numel() and (actions.min() < 0 or actions.max() >= self.cfg.num_actions):
            raise ValueError(f"actions must lie in [0, {self.cfg.num_actions})")
        cache = self.new_cache(b, prompt_tokens.device)
        frames = [prompt_tokens[:, i] for i in range(t0)]
        for i in range(t0):
            self.observe(cache, frames[i], None if i == 0 else prompt_actions[:, i - 1])
        for k in range(actions.shape[1]):
            nxt = self.sample_next(cache, actions[:, k], steps, temperature, generators)
            self.observe(cache, nxt, actions[:, k])
            frames.append(nxt)
        return torch.stack(frames, dim=1)
