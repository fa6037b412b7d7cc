import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from genie_env.data.h5 import ClipDataset, H5DataError, H5Episodes, find_h5_files
from tests.conftest import write_h5


def labelled_episodes(tmp_path, lengths=(10, 7, 12), name="ep.h5"):
    """Every frame of episode e is filled with 10*e; actions[i] == i, rewards[i] == i/10."""
    frames = np.concatenate([np.full((n, 8, 8, 3), 10 * e, np.uint8) for e, n in enumerate(lengths)])
    starts = np.cumsum([0, *lengths[:-1]])
    t = len(frames)
    return write_h5(tmp_path / name, frames=frames, episode_starts=starts, actions=np.arange(t),
                    rewards=np.arange(t, dtype=np.float32) / 10, dones=np.isin(np.arange(t), starts[1:] - 1))


def numbered_frames(tmp_path, lengths=(9, 13), name="num.h5"):
    """Frame i is filled with the value i; actions[i] == i; dones only at each episode's end."""
    t = sum(lengths)
    frames = np.broadcast_to(np.arange(t, dtype=np.uint8)[:, None, None, None], (t, 8, 8, 3)).copy()
    ends = np.cumsum(lengths) - 1
    return write_h5(tmp_path / name, frames=frames, actions=np.arange(t), rewards=np.arange(t) * 0.5,
                    dones=np.isin(np.arange(t), ends))


def test_clips_never_cross_episode_boundaries(tmp_path):
    labelled_episodes(tmp_path)
    ds = ClipDataset(tmp_path, clip_len=6, image_size=(8, 8))
    assert ds.num_episodes == 3 and ds.num_frames == 29 and len(ds) > 0
    for i in range(len(ds)):
        f = ds[i]["frames"]
        assert torch.all(f == f[0, 0, 0, 0]), f"clip {i} mixes episodes"
    # every episode is sampled, and each one's last frames are in some clip
    values = {round(float(ds[i]["frames"][0, 0, 0, 0]) * 255) for i in range(len(ds))}
    assert values == {0, 10, 20}
    last_starts = {s + 6 for _, s in ds.index}
    assert {10, 17, 29} <= last_starts


def test_index_spaces_clip_starts_half_a_clip_apart(tmp_path):
    labelled_episodes(tmp_path, lengths=(20,))
    ds = ClipDataset(tmp_path, clip_len=8, image_size=(8, 8))
    assert [s for _, s in ds.index] == [0, 4, 8, 12]
    ds = ClipDataset(tmp_path, clip_len=6, image_size=(8, 8))
    assert [s for _, s in ds.index] == [0, 3, 6, 9, 12, 14]  # 14: the episode's last full clip


def test_episodes_from_dones_when_no_starts(tmp_path):
    dones = np.zeros(20, bool)
    dones[[4, 19]] = True
    write_h5(tmp_path / "d.h5", frames=np.zeros((20, 8, 8, 3), np.uint8), dones=dones)
    assert H5Episodes.open(tmp_path / "d.h5").episodes == [(0, 5), (5, 20)]
    write_h5(tmp_path / "n.h5", frames=np.zeros((20, 8, 8, 3), np.uint8))
    assert H5Episodes.open(tmp_path / "n.h5").episodes == [(0, 20)]


def test_actions_rewards_dones_align_with_frames(tmp_path):
    numbered_frames(tmp_path)
    ds = ClipDataset(tmp_path, clip_len=4, image_size=(8, 8))
    assert ds.has_actions and ds.has_rewards and ds.num_episodes == 2
    seen_done = 0
    for i in range(len(ds)):
        item = ds[i]
        frame_ids = (item["frames"][:, 0, 0, 0] * 255).round().long()
        assert item["actions"].dtype == torch.int64
        assert torch.equal(item["actions"], frame_ids)
        torch.testing.assert_close(item["rewards"], frame_ids.float() * 0.5)
        assert item["dones"].dtype == torch.float32
        # a done can only be the clip's last entry: clips never run past an episode's end
        assert item["dones"][:-1].sum() == 0
        seen_done += int(item["dones"][-1])
    assert seen_done == 2


def test_continuous_actions_are_float(tmp_path):
    write_h5(tmp_path / "c.h5", frames=np.zeros((6, 8, 8, 3), np.uint8),
             actions=np.linspace(0, 1, 12).reshape(6, 2))
    item = ClipDataset(tmp_path, clip_len=3, image_size=(8, 8))[0]
    assert item["actions"].dtype == torch.float32 and item["actions"].shape == (3, 2)
    assert set(item) == {"frames", "actions"}


def test_layouts_and_dtypes_give_the_same_clips(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    as_float = frames.astype(np.float32) / 255
    variants = {"hwc_u8": dict(frames=frames), "chw_u8": dict(images=frames.transpose(0, 3, 1, 2)),
                "hwc_f32": dict(frames=as_float), "chw_f64": dict(frames=as_float.transpose(0, 3, 1, 2).astype(np.float64))}
    clips = []
    for name, arrays in variants.items():
        (tmp_path / name).mkdir()
        write_h5(tmp_path / name / "x.h5", **arrays)
        clips.append(ClipDataset(tmp_path / name, clip_len=5, image_size=(16, 16))[1]["frames"])  # frames 2..6
    assert clips[0].shape == (5, 3, 16, 16) and clips[0].dtype == torch.float32
    for clip in clips[1:]:
        assert torch.equal(clips[0], clip)
    torch.testing.assert_close(clips[0], torch.from_numpy(frames[2:7]).permute(0, 3, 1, 2) / 255)


def test_resize_gives_image_size(tmp_path):
    y, x = np.mgrid[:32, :48]
    frames = np.broadcast_to((3 * x + 2 * y).astype(np.uint8)[None, :, :, None], (6, 32, 48, 3))
    write_h5(tmp_path / "r.h5", frames=frames)
    item = ClipDataset(tmp_path, clip_len=3, image_size=(16, 24))[0]
    assert item["frames"].shape == (3, 3, 16, 24)
    assert 0 <= item["frames"].min() and item["frames"].max() <= 1
    # a smooth image halves to about the mean of each 2x2 block
    blocks = torch.from_numpy(frames[:3].copy()).permute(0, 3, 1, 2).float().div(255)
    blocks = torch.nn.functional.avg_pool2d(blocks, 2)
    assert (item["frames"] - blocks).abs().mean() < 0.05


def test_one_channel_is_repeated_to_rgb(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 1), dtype=np.uint8)
    (tmp_path / "g").mkdir()
    (tmp_path / "rgb").mkdir()
    write_h5(tmp_path / "g/x.h5", frames=gray.transpose(0, 3, 1, 2))  # (T, 1, H, W)
    write_h5(tmp_path / "rgb/x.h5", frames=np.repeat(gray, 3, axis=-1))
    g = ClipDataset(tmp_path / "g", clip_len=3, image_size=(16, 16))[0]["frames"]
    rgb = ClipDataset(tmp_path / "rgb", clip_len=3, image_size=(16, 16))[0]["frames"]
    assert g.shape == (3, 3, 16, 16) and torch.equal(g, rgb)


def test_train_and_val_hold_out_whole_episodes(tmp_path):
    labelled_episodes(tmp_path, lengths=(8,) * 10)
    kw = dict(clip_len=4, image_size=(8, 8), val_fraction=0.2)
    train, val = ClipDataset(tmp_path, split="train", **kw), ClipDataset(tmp_path, split="val", **kw)
    assert val.num_episodes == 2 and train.num_episodes == 8
    assert not set(train.episodes) & set(val.episodes)
    assert set(train.episodes) | set(val.episodes) == set(ClipDataset(tmp_path, **kw).episodes)
    assert ClipDataset(tmp_path, split="val", **kw).episodes == val.episodes  # deterministic
    other_seeds = [ClipDataset(tmp_path, split="val", seed=s, **kw).episodes for s in range(1, 6)]
    assert any(e != val.episodes for e in other_seeds)
    # clips of a split come from its own episodes only
    val_values = {round(float(val[i]["frames"][0, 0, 0, 0]) * 255) for i in range(len(val))}
    train_values = {round(float(train[i]["frames"][0, 0, 0, 0]) * 255) for i in range(len(train))}
    assert not val_values & train_values


def test_val_gets_an_episode_even_when_the_fraction_rounds_to_none(tmp_path):
    labelled_episodes(tmp_path, lengths=(8, 8))
    val = ClipDataset(tmp_path, clip_len=4, image_size=(8, 8), split="val", val_fraction=0.1)
    train = ClipDataset(tmp_path, clip_len=4, image_size=(8, 8), split="train", val_fraction=0.1)
    assert val.num_episodes == 1 and train.num_episodes == 1


def test_short_episodes_are_skipped(tmp_path, caplog):
    labelled_episodes(tmp_path, lengths=(3, 10, 2))
    with caplog.at_level("INFO", logger="genie_env.data.h5"):
        ds = ClipDataset(tmp_path, clip_len=5, image_size=(8, 8))
    assert ds.num_episodes == 1 and ds.total_episodes == 3
    assert "skipping 2 of 3 episodes shorter than 5 frames" in caplog.text


def test_workers_yield_the_same_clips(tmp_path):
    numbered_frames(tmp_path, name="a.h5")
    labelled_episodes(tmp_path, name="b.h5")
    ds = ClipDataset(tmp_path, clip_len=4, image_size=(8, 8))
    ds[0]  # a handle opened in the parent must not leak into the workers
    serial = list(DataLoader(ds, batch_size=3))
    parallel = list(DataLoader(ds, batch_size=3, num_workers=2))
    assert len(serial) == len(parallel)
    for a, b in zip(serial, parallel):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_real_coinrun_clips(coinrun_dir):
    ds = ClipDataset(coinrun_dir, clip_len=16)
    item = ds[len(ds) // 2]
    assert item["frames"].shape == (16, 3, 64, 64) and item["frames"].dtype == torch.float32
    assert 0 <= item["frames"].min() and item["frames"].max() <= 1 and item["frames"].std() > 0.05
    assert item["actions"].max() < 15 and set(item) == {"frames", "actions", "rewards", "dones"}
    small = ClipDataset(coinrun_dir, clip_len=4, image_size=(32, 32))[0]["frames"]
    assert small.shape == (4, 3, 32, 32)


@pytest.mark.parametrize("case,match", [
    ("missing_key", r"key 'frames' missing; found \['obs'\]"),
    ("rank", r"'frames' has shape \(5, 8, 8\) \(rank 3\)"),
    ("channels", r"no axis of 1 or 3 channels"),
    ("ambiguous", r"both axis 1 and axis 3 could be the channels"),
    ("empty", r"no frames \(empty file\)"),
    ("nan", r"frames 0\.\.1: float pixels hold NaN or inf"),
    ("actions_len", r"'actions' has 4 entries but there are 5 frames"),
    ("rewards_rank", r"'rewards' has shape \(5, 2\); expected \(5,\)"),
    ("corrupt", r"not a readable HDF5 file"),
    ("starts", r"'episode_starts' must begin at 0"),
    ("dtype", r"has dtype bool"),
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
    elif case == "ambiguous":
        write_h5(p, frames=np.zeros((5, 3, 8, 3), np.uint8))
    elif case == "empty":
        write_h5(p, frames=np.zeros((0, 8, 8, 3), np.uint8))
    elif case == "nan":
        f = np.zeros((5, 8, 8, 3), np.float32)
        f[1, 0, 0, 0] = np.nan  # inside the first clip
        write_h5(p, frames=f)
    elif case == "actions_len":
        write_h5(p, frames=frames, actions=np.zeros(4))
    elif case == "rewards_rank":
        write_h5(p, frames=frames, rewards=np.zeros((5, 2)))
    elif case == "corrupt":
        p.write_bytes(b"this is not hdf5 at all" * 10)
    elif case == "starts":
        write_h5(p, frames=frames, episode_starts=np.array([1, 3]))
    elif case == "dtype":
        write_h5(p, frames=frames.astype(bool))
    with pytest.raises(H5DataError, match=match) as err:
        ClipDataset(tmp_path, clip_len=2, image_size=(8, 8))[0]
    assert "bad.h5" in str(err.value)


def test_nan_is_found_when_its_clip_is_read(tmp_path):
    f = np.zeros((12, 8, 8, 3), np.float32)
    f[10] = np.nan
    write_h5(tmp_path / "late_nan.h5", frames=f)
    ds = ClipDataset(tmp_path, clip_len=4, image_size=(8, 8))
    ds[0]  # opening and early clips do not read frame 10
    with pytest.raises(H5DataError, match=r"late_nan\.h5: 'frames' frames 8\.\.11: float pixels hold NaN or inf"):
        ds[len(ds) - 1]


@pytest.mark.parametrize("values, match", [
    (255.0, r"found values in \[0, 255\]\. They look like 0-255 values: divide by 255, or store uint8"),
    (-0.5, r"found values in \[-0\.5, 0\]\. Rescale them to \[0, 1\]"),
])
def test_float_frames_outside_zero_one_are_refused_not_clipped(tmp_path, values, match):
    f = np.zeros((6, 8, 8, 3), np.float32)
    f[2] = values
    write_h5(tmp_path / "scaled.h5", frames=f)
    with pytest.raises(H5DataError, match=r"scaled\.h5: 'frames' frames 0\.\.3: float pixels must lie in \[0, 1\], " + match):
        ClipDataset(tmp_path, clip_len=4, image_size=(8, 8))[0]


def test_float_frames_within_rounding_of_one_are_accepted_and_integers_outside_0_255_refused(tmp_path):
    f = np.full((4, 8, 8, 3), 1.0 + 1e-6, np.float32)
    write_h5(tmp_path / "ok.h5", frames=f)
    assert ClipDataset(tmp_path, clip_len=4, image_size=(8, 8))[0]["frames"].max() == 1.0
    (tmp_path / "ok.h5").unlink()
    write_h5(tmp_path / "wide.h5", frames=np.full((4, 8, 8, 3), 300, np.int16))
    with pytest.raises(H5DataError, match=r"wide\.h5: 'frames' frames 0\.\.3 are integers in \[300, 300\], outside 0-255"):
        ClipDataset(tmp_path, clip_len=4, image_size=(8, 8))[0]


def test_directory_problems(tmp_path):
    with pytest.raises(H5DataError, match="missing: data directory not found.*genie-env collect"):
        ClipDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not data")
    with pytest.raises(H5DataError, match="empty: no .h5 or .hdf5 files.*genie-env collect"):
        find_h5_files(tmp_path / "empty")
    labelled_episodes(tmp_path)
    with pytest.raises(H5DataError, match=r"no episode has 16 frames \(the longest has 12\); lower clip_len"):
        ClipDataset(tmp_path, clip_len=16)
    write_h5(tmp_path / "noact.h5", frames=np.zeros((10, 8, 8, 3), np.uint8))
    with pytest.raises(H5DataError, match=r"disagree.*noact\.h5: \[\]"):
        ClipDataset(tmp_path, clip_len=4)
    with pytest.raises(H5DataError, match="gone.h5: file not found"):
        ClipDataset([tmp_path / "ep.h5", tmp_path / "gone.h5"], clip_len=4)


def test_explicit_file_list_and_hdf5_suffix(tmp_path):
    labelled_episodes(tmp_path, name="a.hdf5")
    labelled_episodes(tmp_path, name="b.h5")
    assert [p.name for p in find_h5_files(tmp_path)] == ["a.hdf5", "b.h5"]
    assert ClipDataset(tmp_path, clip_len=4).num_episodes == 6
    assert ClipDataset([tmp_path / "b.h5"], clip_len=4).num_episodes == 3
