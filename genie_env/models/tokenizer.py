"""Video tokenizer: the ST-ViViT VQ-VAE of Genie §2.1.

Frames are cut into patches, a causal ST encoder maps them to one vector per patch, the vectors
are quantised to ``num_codes`` discrete tokens, and a causal ST decoder maps tokens back to
pixels. Causality in time means token z_t depends only on frames x_1..x_t, so frames can be
encoded and decoded one at a time with a temporal KV cache (what the env does).

``quantizer: kmeans`` (not the paper's) drops the encoder: a patch's token is the nearest of
``num_codes`` pixel patches fitted by k-means on training frames (:class:`PatchCodebook`), and
the decoder starts as the identity on those patches and learns to correct them from context.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from genie_env.config import TokenizerConfig
from genie_env.nn.st_transformer import STTransformer, TemporalKVCache, init_weights
from genie_env.nn.vq import FiniteScalarQuantizer, PatchCodebook, VectorQuantizer


def patchify(video: torch.Tensor, patch: int) -> torch.Tensor:
    """(..., C, H, W) -> (..., H/p * W/p, p*p*C)."""
    return rearrange(video, "... c (h p1) (w p2) -> ... (h w) (p1 p2 c)", p1=patch, p2=patch)


def unpatchify(x: torch.Tensor, patch: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """(..., h*w, p*p*C) -> (..., C, H, W)."""
    return rearrange(x, "... (h w) (p1 p2 c) -> ... c (h p1) (w p2)",
                     h=grid[0], w=grid[1], p1=patch, p2=patch, c=channels)


def patch_grid(cfg) -> tuple[int, int]:
    """Token grid of a pixel model's config (``image_size`` / ``patch_size``), checked."""
    h, w = cfg.image_size
    if h % cfg.patch_size or w % cfg.patch_size:
        raise ValueError(f"image_size {cfg.image_size} is not divisible by patch_size {cfg.patch_size}")
    return h // cfg.patch_size, w // cfg.patch_size


def st_stack(cfg, dim: int, layers: int, heads: int) -> STTransformer:
    """The causal ST-transformer of a pixel model (tokenizer or LAM) over its patch grid."""
    gh, gw = patch_grid(cfg)
    return STTransformer(dim, layers, heads, gh * gw, cfg.max_frames, mlp_ratio=cfg.mlp_ratio,
                         qk_norm=cfg.qk_norm, grad_checkpointing=cfg.grad_checkpointing)


def patch_encoder(cfg) -> tuple[tuple[int, int], int, nn.Linear, STTransformer]:
    """What the two pixel models (tokenizer, LAM) begin with: their token grid, the size of a
    flattened patch, the patch embedding and the causal ST encoder over it."""
    grid = patch_grid(cfg)
    patch_dim = cfg.patch_size ** 2 * cfg.in_channels
    enc_in = nn.Linear(patch_dim, cfg.enc_dim)
    return grid, patch_dim, enc_in, st_stack(cfg, cfg.enc_dim, cfg.enc_layers, cfg.enc_heads)


def check_video(video: torch.Tensor, image_size: tuple[int, int], channels: int, who: str) -> None:
    if video.ndim != 5 or video.shape[2] != channels or tuple(video.shape[-2:]) != tuple(image_size):
        raise ValueError(f"{who} expects video of shape (B, T, {channels}, {image_size[0]}, "
                         f"{image_size[1]}) in [0, 1], got {tuple(video.shape)}")


class VideoTokenizer(nn.Module):
    """Video (B, T, C, H, W) in [0, 1] <-> tokens (B, T, h*w) int64.

    The inference methods (``encode``/``decode`` and their ``_step`` forms) take pixels of any
    float dtype, cast them to the model's own precision, and return float32 pixels, so that a
    bfloat16 tokenizer is a drop-in for a float32 one.
    """

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = patch_grid(cfg)
        patch_dim = cfg.patch_size ** 2 * cfg.in_channels
        self.pixel_codes = cfg.quantizer == "kmeans"
        if self.pixel_codes:
            # Tokens are nearest pixel centroids: no encoder, and the decoder reads the patches.
            self.enc_in = self.encoder = self.to_code = None
            self.vq = PatchCodebook(cfg.num_codes, patch_dim)
            code_dim = patch_dim
        else:
            _, _, self.enc_in, self.encoder = patch_encoder(cfg)
            code_dim = len(cfg.fsq_levels) if cfg.quantizer == "fsq" else cfg.code_dim
            self.to_code = nn.Linear(cfg.enc_dim, code_dim)
            if cfg.quantizer == "fsq":
                self.vq = FiniteScalarQuantizer(cfg.fsq_levels)
            else:
                self.vq = VectorQuantizer(cfg.num_codes, cfg.code_dim, cfg.commitment, cfg.dead_code_steps,
                                          cfg.kmeans_init)
        self.dec_in = nn.Linear(code_dim, cfg.dec_dim)
        self.decoder = st_stack(cfg, cfg.dec_dim, cfg.dec_layers, cfg.dec_heads)
        self.dec_out = nn.Linear(cfg.dec_dim, patch_dim)
        init_weights(self)
        if self.pixel_codes:
            # The decoder starts as the identity on the codes' patches and learns a correction.
            nn.init.zeros_(self.dec_out.weight)
            nn.init.zeros_(self.dec_out.bias)

    def _own(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.dec_in.weight.dtype)

    def _codes(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (..., C, H, W) -> the vectors to quantise, (..., h*w, code dim), all frames at once."""
        patches = patchify(self._own(pixels), self.cfg.patch_size)
        return patches if self.pixel_codes else self.to_code(self.encoder(self.enc_in(patches)))

    def _decode(self, z_q: torch.Tensor, cache: TemporalKVCache | None = None) -> torch.Tensor:
        """Quantised vectors (B, T, h*w, code dim), or one frame's (B, h*w, code dim) after
        ``cache`` -> pixels (..., C, H, W) in [0, 1]."""
        x = self.dec_in(z_q)
        h = self.decoder(x) if cache is None else self.decoder.step(x, cache, commit=True)
        logits = self.dec_out(h)
        if self.pixel_codes:
            logits = logits + torch.logit(z_q.clamp(1e-3, 1 - 1e-3))
        return unpatchify(torch.sigmoid(logits), self.cfg.patch_size, self.grid, self.cfg.in_channels)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass: reconstruction + VQ loss. Returns ``loss`` and the terms behind it."""
        check_video(video, self.cfg.image_size, self.cfg.in_channels, "VideoTokenizer")
        z_q, tokens, vq = self.vq(self._codes(video))
        recon = self._decode(z_q)
        recon_loss = F.mse_loss(recon.float(), video.float())
        return {"loss": recon_loss + vq["loss"], "recon_loss": recon_loss, "vq_loss": vq["loss"],
                "perplexity": vq["perplexity"], "usage": vq["usage"], "recon": recon.detach(),
                "tokens": tokens}

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) in [0, 1] -> tokens (B, T, h*w) int64."""
        check_video(video, self.cfg.image_size, self.cfg.in_channels, "VideoTokenizer.encode")
        return self.vq.nearest(self._codes(video))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, h*w) -> video (B, T, C, H, W) float32 in [0, 1]."""
        return self._decode(self.vq.lookup(tokens)).float()

    @torch.no_grad()
    def code_patches(self, tokens: torch.Tensor) -> torch.Tensor:
        """With pixel codes (``quantizer: kmeans``): tokens (B, T, h*w) -> the codes' own patches as
        video (B, T, C, H, W), what the tokens show before the decoder corrects them."""
        if not self.pixel_codes:
            raise ValueError("code_patches needs a tokenizer with quantizer: kmeans; this one's codes are not pixels")
        return unpatchify(self.vq.lookup(tokens).float(), self.cfg.patch_size, self.grid, self.cfg.in_channels)

    def new_caches(self, batch: int, device=None, dtype=None) -> tuple[TemporalKVCache | None, TemporalKVCache]:
        """Empty (encoder, decoder) caches for frame-by-frame encoding and decoding (no encoder
        cache with pixel codes: each frame's tokens depend on that frame alone)."""
        enc = None if self.pixel_codes else self.encoder.new_cache(batch, device, dtype)
        return enc, self.decoder.new_cache(batch, device, dtype)

    @torch.no_grad()
    def encode_step(self, frame: torch.Tensor, cache: TemporalKVCache | None) -> torch.Tensor:
        """One frame (B, C, H, W) after those in the encoder cache -> tokens (B, h*w)."""
        patches = patchify(self._own(frame), self.cfg.patch_size)
        if self.pixel_codes:
            return self.vq.nearest(patches)
        return self.vq.nearest(self.to_code(self.encoder.step(self.enc_in(patches), cache, commit=True)))

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, cache: TemporalKVCache) -> torch.Tensor:
        """One frame's tokens (B, h*w) after those in the decoder cache -> frame (B, C, H, W) float32."""
        return self._decode(self.vq.lookup(tokens), cache).float()
