import h5py
import numpy as np

from genie_env.cli import main
from genie_env.data.collect import collect_gymnasium
from genie_env.data.h5 import ClipDataset, H5Episodes


def test_coinrun_episodes_are_recorded_and_split_on_resets(coinrun_dir):
    files = sorted(coinrun_dir.glob("*.h5"))
    assert len(files) == 3
    total = 0
    for path in files:
        meta = H5Episodes.open(path)
        with h5py.File(path) as f:
            frames, dones, actions = f["frames"], f["dones"][:], f["actions"][:]
            assert frames.dtype == np.uint8 and frames.shape[1:] == (64, 64, 3)
            starts = f["episode_starts"][:]
            assert starts[0] == 0 and len(starts) == 4
            # a done can only sit on an episode's last frame, and episodes cut at 40 frames have none
            ends = {b - 1 for _, b in meta.episodes}
            assert set(np.flatnonzero(dones).tolist()) <= ends
            for a, b in meta.episodes:
                assert dones[b - 1] == (b - a < 40)
            assert 0 <= actions.min() and actions.max() < 15
            assert frames[:].std() > 10  # real game frames, not blanks
        assert all(b - a <= 40 for a, b in meta.episodes)
        total += len(meta.episodes)
    assert total == 12


def test_gymnasium_env_with_rgb_array(tmp_path):
    files = collect_gymnasium(tmp_path, "CartPole-v1", num_episodes=3, seed=1, max_episode_steps=15,
                              episodes_per_file=2)
    assert [f.name for f in files] == ["CartPole-v1_1_0000.h5", "CartPole-v1_1_0001.h5"]
    ds = ClipDataset(tmp_path, clip_len=4, image_size=(32, 32))
    assert ds.total_episodes == 3 and ds[0]["frames"].shape == (4, 3, 32, 32)
    assert ds[0]["rewards"].eq(1).all()  # CartPole pays 1 per step
    with h5py.File(files[0]) as f:
        starts, dones = f["episode_starts"][:], f["dones"][:]
    ends = np.concatenate([starts[1:], [len(dones)]]) - 1
    # A pole that falls before the 15-step limit terminates; a run cut at 15 does not.
    assert [bool(dones[e]) for e in ends] == [bool(e - s + 1 < 15) for s, e in zip(starts, ends)]


def test_cli_collect_end_to_end(tmp_path, capsys):
    assert main(["collect", "--env", "coinrun", "--episodes", "2", "--max_episode_steps", "20",
                 "--out", str(tmp_path)]) == 0
    assert H5Episodes.open(next(tmp_path.glob("*.h5"))).num_frames == 40
    assert main(["collect", "--env", "NoSuchEnv-v0", "--episodes", "1", "--out", str(tmp_path / "x")]) == 2
    assert "NoSuchEnv-v0" in capsys.readouterr().err
