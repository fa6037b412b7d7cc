import os

import numpy as np
import pytest
import torch

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def coinrun_dir(tmp_path_factory):
    """Real CoinRun episodes from our own collector: hard mode, random policy, short episodes."""
    from genie_env.data.collect import collect_procgen
    out = tmp_path_factory.mktemp("coinrun")
    collect_procgen(out, "coinrun", num_episodes=12, seed=0, max_episode_steps=40, episodes_per_file=4)
    return out


@pytest.fixture(scope="session")
def coinrun_clips(coinrun_dir):
    """Four 8-frame CoinRun clips (4, 8, 3, 64, 64) in [0, 1]."""
    from genie_env.data.h5 import ClipDataset
    ds = ClipDataset(coinrun_dir, clip_len=8)
    return torch.stack([ds[i]["frames"] for i in np.linspace(0, len(ds) - 1, 4).astype(int)])
