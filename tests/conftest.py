import os

import h5py
import numpy as np
import pytest
import torch

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
torch.set_num_threads(2)


def write_h5(path, **arrays):
    """Write each keyword as a dataset of a new H5 file at ``path``; returns the path."""
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


@pytest.fixture(scope="session")
def coinrun_dir(tmp_path_factory):
    """Real CoinRun episodes from our own collector: hard mode, random policy, short episodes."""
    from genie_env.data.collect import collect_procgen
    out = tmp_path_factory.mktemp("coinrun")
    collect_procgen(out, "coinrun", num_episodes=12, seed=0, max_episode_steps=40, episodes_per_file=4)
    return out


@pytest.fixture(scope="session")
def key_probes(tmp_path_factory):
    """Four key probes of CoinRun levels (genie-env probes): real states and each key held 6 steps."""
    from genie_env.data.probes import collect_key_probes
    return collect_key_probes(tmp_path_factory.mktemp("probes") / "probes.h5", num_probes=4, seed=2000)


@pytest.fixture(scope="session")
def coinrun_clips(coinrun_dir):
    """Four 8-frame CoinRun clips (4, 8, 3, 64, 64) in [0, 1]."""
    from genie_env.data.h5 import ClipDataset
    ds = ClipDataset(coinrun_dir, clip_len=8)
    return torch.stack([ds[i]["frames"] for i in np.linspace(0, len(ds) - 1, 4).astype(int)])


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Tiny random-weight checkpoints (16x16 frames, 4x4 tokens, a 4-frame window) and prompts."""
    # Imported here so that the data tests do not depend on the models.
    from genie_env.checkpoint import save_checkpoint
    from genie_env.config import StageConfig
    from genie_env.models import DynamicsModel, VideoTokenizer
    from tests.tiny import dynamics_cfg, tokenizer_cfg
    d = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    tok = VideoTokenizer(tokenizer_cfg(max_frames=4))
    save_checkpoint(d / "tok.pt", tok, StageConfig("tokenizer", tok.cfg))
    for name, heads in (("dyn.pt", False), ("dyn_heads.pt", True)):
        dyn = DynamicsModel(dynamics_cfg(token_grid=(4, 4), vocab_size=32, max_frames=4, reward_head=heads))
        save_checkpoint(d / name, dyn, StageConfig("dynamics", dyn.cfg))
    prompts = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    return {"dir": d, "tok": d / "tok.pt", "dyn": d / "dyn.pt", "heads": d / "dyn_heads.pt", "prompts": prompts}
