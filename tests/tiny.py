"""Tiny model configs and toy videos for fast CPU tests."""
import torch

from genie_env.config import DynamicsConfig, LAMConfig, TokenizerConfig


def tokenizer_cfg(**kw) -> TokenizerConfig:
    base = dict(image_size=(16, 16), patch_size=4, max_frames=6, num_codes=32, code_dim=8,
                enc_layers=2, enc_dim=32, enc_heads=2, dec_layers=2, dec_dim=32, dec_heads=2)
    return TokenizerConfig(**{**base, **kw})


def lam_cfg(**kw) -> LAMConfig:
    base = dict(image_size=(16, 16), patch_size=8, max_frames=6, num_actions=4, action_dim=8,
                enc_layers=2, enc_dim=32, enc_heads=2, dec_layers=2, dec_dim=32, dec_heads=2)
    return LAMConfig(**{**base, **kw})


def dynamics_cfg(**kw) -> DynamicsConfig:
    base = dict(token_grid=(2, 2), vocab_size=16, num_actions=4, max_frames=6, num_layers=2,
                d_model=32, num_heads=2, qk_dim=16, maskgit_steps=4)
    return DynamicsConfig(**{**base, **kw})


def moving_square(batch: int, frames: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Videos (B, T, 3, size, size) of a 4x4 square moved by random actions, and the actions (B, T-1).

    Action 0/1/2/3 moves the square right/left/down/up by 2 pixels (wrapping).
    """
    g = torch.Generator().manual_seed(seed)
    moves = torch.tensor([[0, 2], [0, -2], [2, 0], [-2, 0]])
    actions = torch.randint(0, 4, (batch, frames - 1), generator=g)
    pos = torch.randint(0, size, (batch, 2), generator=g)
    video = torch.zeros(batch, frames, 3, size, size)
    for t in range(frames):
        for b in range(batch):
            r, c = pos[b].tolist()
            rows = [(r + i) % size for i in range(4)]
            cols = [(c + j) % size for j in range(4)]
            for i in rows:
                video[b, t, 0, i, cols] = 1.0
                video[b, t, 1, i, cols] = 0.5
        if t < frames - 1:
            pos = (pos + moves[actions[:, t]]) % size
    return video, actions
