import gymnasium as gym
import h5py
import numpy as np
import pytest

from genie_env.cli import main
from genie_env.data.collect import collect_gymnasium, collect_procgen
from genie_env.data.h5 import ClipDataset, H5Episodes


def read_all(path):
    with h5py.File(path) as f:
        return {k: f[k][:] for k in f}


def test_coinrun_files_hold_the_documented_format(coinrun_dir):
    files = sorted(coinrun_dir.glob("*.h5"))
    assert [p.name for p in files] == ["coinrun_0_0000.h5", "coinrun_0_0001.h5", "coinrun_0_0002.h5"]
    total = 0
    for path in files:
        with h5py.File(path) as f:
            assert f["frames"].dtype == np.uint8 and f["frames"].shape[1:] == (64, 64, 3)
            assert f["frames"].compression == "lzf" and f["frames"].chunks[0] == 16
            assert (f["actions"].dtype, f["rewards"].dtype, f["dones"].dtype) == (np.int64, np.float32, bool)
        data = read_all(path)
        starts, n = data["episode_starts"], len(data["frames"])
        assert starts[0] == 0 and np.all(np.diff(starts) > 0) and len(starts) == 4
        assert all(len(data[k]) == n for k in ("actions", "rewards", "dones"))
        episodes = H5Episodes.open(path).episodes
        assert [a for a, _ in episodes] == starts.tolist()
        # every episode was cut at 40 frames: a cut is a boundary but not a done
        assert all(b - a == 40 for a, b in episodes) and not data["dones"].any()
        assert 0 <= data["actions"].min() and data["actions"].max() < 15
        assert data["frames"].std() > 10  # real game frames, not blanks
        total += len(episodes)
    assert total == 12


def test_coinrun_resets_end_episodes_with_done_and_the_final_reward(tmp_path):
    (path,) = collect_procgen(tmp_path, "coinrun", num_episodes=3, seed=0)
    data = read_all(path)
    episodes = H5Episodes.open(path).episodes
    assert len(episodes) == 3 and episodes[-1][1] == len(data["frames"])
    # done exactly on each episode's last stored frame (the terminal frame is never observable)
    assert np.flatnonzero(data["dones"]).tolist() == [b - 1 for _, b in episodes]
    # gym3 reports the coin's reward together with the next episode's first frame;
    # it belongs to the transition that ended the episode
    rewarded = np.flatnonzero(data["rewards"])
    assert len(rewarded) > 0 and set(rewarded.tolist()) <= {b - 1 for _, b in episodes}
    # each episode begins on a fresh level: its first frame differs from the previous last one
    for (_, b), (a, _) in zip(episodes, episodes[1:]):
        assert not np.array_equal(data["frames"][b - 1], data["frames"][a])


def test_collection_is_reproducible_from_the_seed(tmp_path):
    a = collect_procgen(tmp_path / "a", "coinrun", num_episodes=2, seed=5, max_episode_steps=15)
    b = collect_procgen(tmp_path / "b", "coinrun", num_episodes=2, seed=5, max_episode_steps=15)
    c = collect_procgen(tmp_path / "c", "coinrun", num_episodes=2, seed=6, max_episode_steps=15)
    da, db, dc = read_all(a[0]), read_all(b[0]), read_all(c[0])
    assert all(np.array_equal(da[k], db[k]) for k in da)
    assert not np.array_equal(da["frames"], dc["frames"])


def test_gymnasium_env_with_rgb_array(tmp_path):
    files = collect_gymnasium(tmp_path, "CartPole-v1", num_episodes=3, seed=1, max_episode_steps=15,
                              episodes_per_file=2)
    assert [f.name for f in files] == ["CartPole-v1_1_0000.h5", "CartPole-v1_1_0001.h5"]
    data = read_all(files[0])
    assert data["frames"].dtype == np.uint8 and data["frames"].shape[1:] == (400, 600, 3)
    assert data["actions"].dtype == np.int64 and set(np.unique(data["actions"])) <= {0, 1}
    ds = ClipDataset(tmp_path, clip_len=4, image_size=(32, 32))
    assert ds.total_episodes == 3 and ds[0]["frames"].shape == (4, 3, 32, 32)
    assert ds[0]["rewards"].eq(1).all()  # CartPole pays 1 per step
    starts, dones = data["episode_starts"], data["dones"]
    ends = np.concatenate([starts[1:], [len(dones)]]) - 1
    assert np.flatnonzero(dones).tolist() == [e for s, e in zip(starts, ends) if e - s + 1 < 15]


class _NoPixels(gym.Env):
    metadata = {"render_modes": []}
    observation_space = gym.spaces.Discrete(2)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode


@pytest.mark.filterwarnings("ignore:.*render_mode.*:UserWarning")
def test_gymnasium_env_without_rgb_array_is_refused(tmp_path):
    gym.register("NoPixels-v0", entry_point=_NoPixels)
    with pytest.raises(RuntimeError, match=r"NoPixels-v0 cannot render rgb_array frames"):
        collect_gymnasium(tmp_path, "NoPixels-v0", num_episodes=1)


def test_cli_collect_end_to_end(tmp_path, capsys, caplog):
    with caplog.at_level("INFO", logger="genie_env.data.collect"):
        assert main(["collect", "--env", "coinrun", "--episodes", "3", "--max_episode_steps", "20",
                     "--episodes_per_file", "2", "--out", str(tmp_path / "cr")]) == 0
    assert f"wrote 3 episodes (60 frames) of coinrun to 2 files in {tmp_path / 'cr'}" in caplog.text
    ds = ClipDataset(tmp_path / "cr", clip_len=8)
    assert ds.num_episodes == 3 and ds.num_frames == 60 and ds[0]["frames"].shape == (8, 3, 64, 64)
    assert main(["collect", "--env", "CartPole-v1", "--episodes", "1", "--max_episode_steps", "5",
                 "--out", str(tmp_path / "cp")]) == 0
    assert H5Episodes.open(tmp_path / "cp" / "CartPole-v1_0_0000.h5").num_frames == 5
    assert main(["collect", "--env", "NoSuchEnv-v0", "--episodes", "1", "--out", str(tmp_path / "x")]) == 2
    assert "NoSuchEnv-v0" in capsys.readouterr().err
