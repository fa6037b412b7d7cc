import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from genie_env.data.h5 import ClipDataset, H5DataError, H5Episodes


def write_h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


def labelled_episodes(tmp_path, lengths=(10, 7, 12), name="ep.h5", **extra):
    """Every frame of episode e is filled with the value 10*e; actions[i] == i."""
    frames = np.concatenate([np.full((n, 8, 8, 3), 10 * e, np.uint8) for e, n in enumerate(lengths)])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    t = len(frames)
    return write_h5(tmp_path / name, frames=frames, episode_starts=starts, actions=np.arange(t),
                    rewards=np.arange(t, dtype=np.float32) / 10, dones=np.isin(np.arange(t), starts[1:] - 1), **extra)


def test_clips_never_cross_episode_boundaries(tmp_path):
    labelled_episodes(tmp_path)
    ds = ClipDataset(tmp_path, clip_len=6, image_size=(8, 8))
    assert ds.num_episodes == 3 and len(ds) > 0
    for i in range(len(ds)):
        f = ds[i]["frames"]
        assert torch.all(f == f[0, 0, 0, 0]), f"clip {i} mixes episodes"
    # every episode is sampled, including the last frames of each
    values = {round(float(ds[i]["frames"][0, 0, 0, 0]) * 255) for i in range(len(ds))}
    assert values == {0, 10, 20}


def test_episodes_from_dones_when_no_starts(tmp_path):
    dones = np.zeros(20, bool)
    dones[[4, 19]] = True
    write_h5(tmp_path / "d.h5", frames=np.zeros((20, 8, 8, 3), np.uint8), dones=dones)
    assert H5Episodes.open(tmp_path / "d.h5").episodes == [(0, 5), (5, 20)]
    write_h5(tmp_path / "n.h5", frames=np.zeros((20, 8, 8, 3), np.uint8))
    assert H5Episodes.open(tmp_path / "n.h5").episodes == [(0, 20)]


def test_actions_rewards_dones_align_with_frames(tmp_path):
    labelled_episodes(tmp_path)
    ds = ClipDataset(tmp_path, clip_len=4, image_size=(8, 8))
    for i in range(len(ds)):
        item = ds[i]
        ep, start = ds.index[i]
        assert item["actions"].tolist() == list(range(start, start + 4))
        assert item["actions"].dtype == torch.int64
        torch.testing.assert_close(item["rewards"], torch.arange(start, start + 4).float() / 10)
    assert ds.has_actions and ds.has_rewards


def test_layouts_and_dtypes_give_the_same_clips(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    write_h5(tmp_path / "a/x.h5", frames=frames)
    write_h5(tmp_path / "b/x.h5", images=frames.transpose(0, 3, 1, 2))
    write_h5(tmp_path / "c/x.h5", frames=frames.astype(np.float32) / 255)
    clips = [ClipDataset(tmp_path / d, clip_len=5, image_size=(16, 16))[1]["frames"] for d in "abc"]
    assert torch.equal(clips[0], clips[1])
    torch.testing.assert_close(clips[0], clips[2], atol=1 / 255, rtol=0)
    assert clips[0].shape == (5, 3, 16, 16)


def test_resize_and_grayscale(tmp_path):
    write_h5(tmp_path / "g.h5", frames=np.full((6, 32, 48, 1), 128, np.uint8))
    item = ClipDataset(tmp_path, clip_len=3, image_size=(16, 16))[0]
    assert item["frames"].shape == (3, 3, 16, 16)
    torch.testing.assert_close(item["frames"], torch.full((3, 3, 16, 16), 128 / 255))


def test_train_and_val_hold_out_whole_episodes(tmp_path):
    labelled_episodes(tmp_path, lengths=(8,) * 10)
    train = ClipDataset(tmp_path, clip_len=4, image_size=(8, 8), split="train", val_fraction=0.2)
    val = ClipDataset(tmp_path, clip_len=4, image_size=(8, 8), split="val", val_fraction=0.2)
    assert val.num_episodes == 2 and train.num_episodes == 8
    assert not set(train.episodes) & set(val.episodes)
    assert set(train.episodes) | set(val.episodes) == set(ClipDataset(tmp_path, clip_len=4).episodes)


def test_workers_yield_the_same_clips(tmp_path):
    labelled_episodes(tmp_path)
    ds = ClipDataset(tmp_path, clip_len=4, image_size=(8, 8))
    ds[0]  # a handle opened in the parent must not leak into the workers
    serial = [b["frames"] for b in DataLoader(ds, batch_size=3)]
    parallel = [b["frames"] for b in DataLoader(ds, batch_size=3, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))


def test_real_coinrun_clips(coinrun_dir):
    ds = ClipDataset(coinrun_dir, clip_len=16)
    item = ds[len(ds) // 2]
    assert item["frames"].shape == (16, 3, 64, 64) and item["frames"].dtype == torch.float32
    assert 0 <= item["frames"].min() and item["frames"].max() <= 1 and item["frames"].std() > 0.05
    assert item["actions"].max() < 15 and set(item) == {"frames", "actions", "rewards", "dones"}


@pytest.mark.parametrize("case,match", [
    ("missing_key", r"key 'frames' missing; found \['obs'\]"),
    ("rank", r"'frames' has shape \(5, 8, 8\) \(rank 3\)"),
    ("channels", r"no axis of 1 or 3 channels"),
    ("empty", r"holds no frames"),
    ("nan", r"NaN or inf in frames"),
    ("actions_len", r"'actions' has 4 entries but there are 5 frames"),
    ("corrupt", r"not a readable HDF5 file"),
    ("starts", r"'episode_starts' must begin at 0"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, case, match):
    p = tmp_path / "bad.h5"
    frames = np.zeros((5, 8, 8, 3), np.uint8)
    if case == "missing_key":
        write_h5(p, obs=frames)
    elif case == "rank":
        write_h5(p, frames=np.zeros((5, 8, 8), np.uint8))
    elif case == "channels":
        write_h5(p, frames=np.zeros((5, 8, 8, 5), np.uint8))
    elif case == "empty":
        write_h5(p, frames=np.zeros((0, 8, 8, 3), np.uint8))
    elif case == "nan":
        f = np.zeros((5, 8, 8, 3), np.float32)
        f[1, 0, 0, 0] = np.nan  # inside the first clip
        write_h5(p, frames=f)
    elif case == "actions_len":
        write_h5(p, frames=frames, actions=np.zeros(4))
    elif case == "corrupt":
        p.write_bytes(b"this is not hdf5 at all" * 10)
    elif case == "starts":
        write_h5(p, frames=frames, episode_starts=np.array([1, 3]))
    with pytest.raises(H5DataError, match=match) as err:
        ds = ClipDataset(tmp_path, clip_len=2, image_size=(8, 8))
        ds[0]
    assert "bad.h5" in str(err.value)


def test_directory_problems(tmp_path):
    with pytest.raises(H5DataError, match="data directory not found.*genie-env collect"):
        ClipDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(H5DataError, match="no .h5 or .hdf5 files"):
        ClipDataset(tmp_path / "empty")
    labelled_episodes(tmp_path)
    with pytest.raises(H5DataError, match="no episode has 16 frames \\(the longest has 12\\)"):
        ClipDataset(tmp_path, clip_len=16)
    write_h5(tmp_path / "noact.h5", frames=np.zeros((10, 8, 8, 3), np.uint8))
    with pytest.raises(H5DataError, match="disagree"):
        ClipDataset(tmp_path, clip_len=4)
