"""The spatiotemporal (ST) transformer shared by the tokenizer, the LAM and the dynamics model.

Each block is, as in Genie §2 (Fig. 4): spatial attention over one frame's tokens, then causal
temporal attention over the frames at one token position, then ONE feed-forward after both
(the paper drops the post-spatial FFN on purpose). Pre-norm, optional QK-norm.

Positions: a learned embedding per spatial token is added at the input; time is encoded with
rotary embeddings inside temporal attention. Rotary keeps only the distance between frames, so a
temporal key/value cache stays valid when the window slides: a key is rotated once, at its
absolute frame index, when it is written.

Inference keeps a per-layer temporal KV cache (:class:`TemporalKVCache`): generating frame t
runs only frame t's tokens through the network. The cache is a ring buffer of ``max_frames - 1``
past frames per batch row, with per-row positions and validity, so rows of a batch may be at
different times (vector envs reset rows independently) and the cost of a step does not grow with
the episode. Within ``max_frames`` frames a cached step equals a full recompute; past it, the
window slides (older frames' influence lingers through deeper layers, as in any rolling cache).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint


def rotary_cos_sin(pos: torch.Tensor, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary embeddings at integer positions ``pos`` (any shape) -> (..., dim)."""
    # float64 angles: absolute positions grow with the episode and float32 would lose the phase.
    inv_freq = base ** (-torch.arange(0, dim, 2, device=pos.device, dtype=torch.float64) / dim)
    angles = pos.to(torch.float64)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with separate q/k and v head sizes and optional QK-norm."""

    def __init__(self, dim: int, heads: int, qk_dim: int | None = None, qk_norm: bool = True):
        super().__init__()
        self.heads = heads
        self.v_dim = dim // heads
        self.qk_dim = qk_dim or self.v_dim
        if self.qk_dim % 2:
            raise ValueError(f"qk_dim must be even for rotary embeddings, got {self.qk_dim}")
        self.qkv = nn.Linear(dim, heads * (2 * self.qk_dim + self.v_dim), bias=False)
        self.out = nn.Linear(heads * self.v_dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.qk_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.qk_dim) if qk_norm else nn.Identity()

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (..., L, dim) -> q, k (..., heads, L, qk_dim), v (..., heads, L, v_dim)."""
        h, dq = self.heads, self.qk_dim
        q, k, v = self.qkv(x).split([h * dq, h * dq, h * self.v_dim], dim=-1)
        # Normed before the heads move in front of L, on a contiguous tensor: RMSNorm over the
        # strided view was one of the larger costs of a CPU step (BENCHMARKS.md, session 20's
        # paragraph under "The candidate world of issue 9 through `gym.make`").
        q = rearrange(self.q_norm(q.unflatten(-1, (h, dq))), "... l h d -> ... h l d")
        k = rearrange(self.k_norm(k.unflatten(-1, (h, dq))), "... l h d -> ... h l d")
        v = rearrange(v, "... l (h d) -> ... h l d", h=h)
        return q, k, v

    def merge(self, o: torch.Tensor) -> torch.Tensor:
        return self.out(rearrange(o, "... h l d -> ... l (h d)"))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Attention over (..., heads, L, d) with any number of leading dims: folded into one batch
    dim, since PyTorch's fused (flash / memory-efficient) kernels take 4-D inputs only and 5-D
    ones fall back to the unfused path."""
    lead = q.shape[:-3]
    o = F.scaled_dot_product_attention(q.flatten(0, len(lead) - 1), k.flatten(0, len(lead) - 1),
                                       v.flatten(0, len(lead) - 1), is_causal=causal)
    return o.unflatten(0, lead)


class TemporalKVCache:
    """Per-layer keys/values of past frames for every token position: a ring buffer per row.

    keys[l], values[l]: (B, N, heads, S, d) with S = max_frames - 1 slots; ``valid`` (B, S) marks
    filled slots and ``pos`` (B,) is each row's next absolute frame index.
    """

    def __init__(self, num_layers: int, batch: int, tokens: int, heads: int, qk_dim: int,
                 v_dim: int, slots: int, device, dtype):
        self.slots = slots
        self.keys = [torch.zeros(batch, tokens, heads, slots, qk_dim, device=device, dtype=dtype)
                     for _ in range(num_layers)]
        self.values = [torch.zeros(batch, tokens, heads, slots, v_dim, device=device, dtype=dtype)
                       for _ in range(num_layers)]
        self.valid = torch.zeros(batch, slots, dtype=torch.bool, device=device)
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    @property
    def length(self) -> torch.Tensor:
        """Number of cached frames per row, (B,)."""
        return self.valid.sum(dim=1)

    def subset(self, rows: torch.Tensor) -> "TemporalKVCache":
        """A copy holding only ``rows`` (a LongTensor of batch indices), for stepping some rows."""
        sub = object.__new__(TemporalKVCache)
        sub.slots = self.slots
        sub.keys = [k[rows] for k in self.keys]
        sub.values = [v[rows] for v in self.values]
        sub.valid, sub.pos = self.valid[rows], self.pos[rows]
        return sub

    def assign(self, rows: torch.Tensor, sub: "TemporalKVCache") -> None:
        """Write a :meth:`subset` back into ``rows``."""
        for k, v, sk, sv in zip(self.keys, self.values, sub.keys, sub.values):
            k[rows], v[rows] = sk, sv
        self.valid[rows], self.pos[rows] = sub.valid, sub.pos

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Forget the past of ``rows`` (a (B,) bool mask; all rows when None)."""
        if rows is None:
            self.valid.zero_()
            self.pos.zero_()
        else:
            rows = rows.to(self.valid.device)
            self.valid[rows] = False
            self.pos[rows] = 0


class STBlock(nn.Module):
    def __init__(self, dim: int, heads: int, qk_dim: int | None, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm_s = nn.LayerNorm(dim)
        self.spatial = Attention(dim, heads, qk_dim, qk_norm)
        self.norm_t = nn.LayerNorm(dim)
        self.temporal = Attention(dim, heads, qk_dim, qk_norm)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.spatial.project(self.norm_s(x))
        return self.spatial.merge(attend(q, k, v))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, causal: bool) -> torch.Tensor:
        """x (B, T, N, D); cos/sin (T, qk_dim) for the temporal rotary embedding."""
        b = x.shape[0]
        x = x + self._spatial(x)
        h = rearrange(self.norm_t(x), "b t n d -> b n t d")
        q, k, v = self.temporal.project(h)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        o = attend(q, k, v, causal)
        x = x + rearrange(self.temporal.merge(o), "b n t d -> b t n d", b=b)
        return x + self.mlp(self.norm_mlp(x))

    def step(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             cache_k: torch.Tensor, cache_v: torch.Tensor, valid: torch.Tensor,
             write_slot: torch.Tensor | None) -> torch.Tensor:
        """One frame x (B, N, D) attending to its cached past; cos/sin (B, qk_dim) at its position.

        When ``write_slot`` (B,) is given the frame's own key/value are stored there.
        """
        x = x + self._spatial(x)
        q, k, v = self.temporal.project(self.norm_t(x).unsqueeze(-2))  # (B, N, h, 1, d)
        rot = (cos[:, None, None, None, :], sin[:, None, None, None, :])
        q, k = apply_rotary(q, *rot), apply_rotary(k, *rot)
        scale = q.shape[-1] ** -0.5
        # A single query per position: two small matmuls instead of concatenating the cache.
        s_past = (q @ cache_k.transpose(-1, -2)) * scale  # (B, N, h, 1, S)
        s_past = s_past.masked_fill(~valid[:, None, None, None, :], float("-inf"))
        s_self = (q * k).sum(-1, keepdim=True) * scale  # (B, N, h, 1, 1)
        p = torch.softmax(torch.cat([s_past, s_self], dim=-1).float(), dim=-1).to(v.dtype)
        # Weights times values summed over the slots, not a matmul: a batch of B*N*h products of
        # (1, S) @ (S, d) was a large share of a CPU step (the same BENCHMARKS.md paragraph).
        o = (p[..., :-1].transpose(-1, -2) * cache_v).sum(-2, keepdim=True) + p[..., -1:] * v  # (B, N, h, 1, d)
        x = x + self.temporal.merge(o).squeeze(-2)
        if write_slot is not None:
            rows = torch.arange(x.shape[0], device=x.device)
            cache_k[rows, :, :, write_slot] = k.squeeze(-2).to(cache_k.dtype)
            cache_v[rows, :, :, write_slot] = v.squeeze(-2).to(cache_v.dtype)
        return x + self.mlp(self.norm_mlp(x))


class STTransformer(nn.Module):
    """A stack of ST blocks over (B, T, N, D) token grids, causal in time.

    ``forward`` runs a whole clip (training, or recompute); ``step`` runs one new frame against a
    :class:`TemporalKVCache` (generation). Both add the learned spatial position embedding.
    """

    def __init__(self, dim: int, depth: int, heads: int, num_tokens: int, max_frames: int,
                 qk_dim: int | None = None, mlp_ratio: float = 4.0, qk_norm: bool = True,
                 causal: bool = True, grad_checkpointing: bool = False):
        super().__init__()
        self.dim, self.heads, self.max_frames, self.causal = dim, heads, max_frames, causal
        self.num_tokens = num_tokens
        self.grad_checkpointing = grad_checkpointing
        self.spatial_pos = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(STBlock(dim, heads, qk_dim, mlp_ratio, qk_norm) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim)
        self.qk_dim = self.blocks[0].temporal.qk_dim
        self.v_dim = self.blocks[0].temporal.v_dim
        self._compiled_step = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, N, D) -> (B, T, N, D); frame t sees frames <= t only (when causal)."""
        t = x.shape[1]
        if t > self.max_frames:
            raise ValueError(f"clip of {t} frames exceeds max_frames={self.max_frames}")
        cos, sin = rotary_cos_sin(torch.arange(t, device=x.device), self.qk_dim)
        x = x + self.spatial_pos
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, self.causal, use_reentrant=False)
            else:
                x = block(x, cos, sin, self.causal)
        return self.norm_out(x)

    def new_cache(self, batch: int, device=None, dtype=None) -> TemporalKVCache:
        p = self.spatial_pos
        return TemporalKVCache(len(self.blocks), batch, self.num_tokens, self.heads, self.qk_dim,
                               self.v_dim, self.max_frames - 1, device or p.device, dtype or p.dtype)

    def step(self, x: torch.Tensor, cache: TemporalKVCache, commit: bool) -> torch.Tensor:
        """Run one frame x (B, N, D) after the frames held in ``cache`` -> (B, N, D).

        With ``commit`` the frame joins the cache (its keys/values overwrite the oldest slot once
        the window is full); without it the cache is untouched, as MaskGIT's refinement passes need.
        """
        if not self.causal:
            raise RuntimeError("step() needs a causal STTransformer")
        return (self._compiled_step or self._step)(x, cache, commit)

    def compile_step(self, enable: bool = True, **kwargs) -> None:
        """Run :meth:`step` through ``torch.compile`` from now on (``kwargs`` go to it), or,
        with ``enable=False``, eagerly again.

        A step is many small kernels over one frame; fusing them is what compiling buys
        (measured in BENCHMARKS.md). The first calls at each batch size pay the compile time.
        """
        self._compiled_step = torch.compile(self._step, **kwargs) if enable else None

    def _step(self, x: torch.Tensor, cache: TemporalKVCache, commit: bool) -> torch.Tensor:
        cos, sin = rotary_cos_sin(cache.pos, self.qk_dim)
        slot = cache.pos % cache.slots if commit else None
        x = x + self.spatial_pos
        for block, k, v in zip(self.blocks, cache.keys, cache.values):
            # Each layer reads its slots before overwriting one, and validity changes only after
            # the last layer, so a full window still attends to its oldest frame in this pass.
            x = block.step(x, cos, sin, k, v, cache.valid, slot)
        if commit:
            cache.valid[torch.arange(cache.batch_size, device=slot.device), slot] = True
            cache.pos += 1
        return self.norm_out(x)


def init_weights(module: nn.Module) -> None:
    """GPT-style init: small normal weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
