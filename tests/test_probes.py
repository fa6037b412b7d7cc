import h5py
import numpy as np
import pytest

from genie_env.cli import main
from genie_env.data.probes import KEYS, collect_key_probes, load_key_probes
from genie_env.evaluate import score_directions
from genie_env.metrics import frame_shifts


def test_key_probes_hold_each_key_from_one_saved_state_of_the_real_game(key_probes, tmp_path):
    p = load_key_probes(key_probes)
    assert p["keys"] == ["right", "left"] and p["steps"] == 6
    assert p["prompts"].shape == (4, 64, 64, 3) and p["frames"].shape == (4, 2, 6, 64, 64, 3)
    with h5py.File(key_probes) as f:
        assert np.all((8 <= f["warmup"][()]) & (f["warmup"][()] <= 64))
        assert len(set(f["level_seeds"][()].tolist())) == 4
    # The stored scroll is the frames' own, counted as eval counts a world's.
    for i in range(4):
        for k in range(2):
            clip = np.concatenate([p["prompts"][i][None], p["frames"][i, k]])
            assert p["scroll"][i, k] == frame_shifts(clip[:-1], clip[1:], 4)[:, 1].sum()
    # Both keys start from the same state: their first frames differ from the prompt by one step
    # of the game, and the two holds part ways.
    assert not np.array_equal(p["frames"][:, 0], p["frames"][:, 1])
    # The game and the warm-up are seeded: the same command writes the same probes.
    again = load_key_probes(collect_key_probes(tmp_path / "again.h5", num_probes=4, seed=2000))
    for key in ("prompts", "frames", "scroll"):
        np.testing.assert_array_equal(again[key], p[key])


def test_from_an_episodes_first_frame_the_real_games_left_key_scrolls_nothing(tmp_path):
    # Why eval's key check needs probes: CoinRun's agent starts against the level's left wall.
    p = load_key_probes(collect_key_probes(tmp_path / "starts.h5", num_probes=4, seed=2000, min_warmup=0,
                                           max_warmup=0))
    right, left = p["scroll"][:, list(KEYS).index("right")], p["scroll"][:, list(KEYS).index("left")]
    assert np.all(right > 0) and np.all(left <= 0), p["scroll"]


def test_bad_probe_files_and_settings_are_refused_with_the_fix(tmp_path, key_probes, capsys):
    with pytest.raises(ValueError, match="file not found. Write one with: genie-env probes"):
        load_key_probes(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("not h5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        load_key_probes(tmp_path / "text.h5")
    with h5py.File(tmp_path / "episodes.h5", "w") as f:
        f["frames"] = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="not a key probes file"):
        load_key_probes(tmp_path / "episodes.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(key_probes.read_bytes())
    with h5py.File(bad, "a") as f:
        del f["scroll"]
        f["scroll"] = np.zeros((3, 2), np.int64)
    with pytest.raises(ValueError, match="inconsistent key probes"):
        load_key_probes(bad)
    assert main(["probes", "--env", "CartPole-v1", "--out", str(tmp_path / "x.h5")]) == 2
    assert "need a Procgen game" in capsys.readouterr().err
    with pytest.raises(ValueError, match="min_warmup <= max_warmup"):
        collect_key_probes(tmp_path / "y.h5", min_warmup=9, max_warmup=8)


def test_arrow_keys_are_scored_against_what_the_real_game_did():
    directions = ["right"] * 4 + ["left"] * 4
    world = np.array([2, 0, -1, 1, -3, 0, 2, -1])
    real = np.array([5, 4, 0, -1, -6, -2, 0, 0])
    out = score_directions(world, directions, real)
    assert out["arrow keys: right scrolls right (fraction)"] == 0.5
    assert out["arrow keys: left scrolls left (fraction)"] == 0.5
    assert out["arrow keys: the real game's right scrolls right (fraction)"] == 0.5
    assert out["arrow keys: the real game's left scrolls left (fraction)"] == 0.5
    # of the two trials where the real right key scrolled right the world's did in one; of the two
    # where the real left key scrolled left, in one
    assert out["arrow keys: right scrolls right where the real game's did (fraction)"] == 0.5
    assert out["arrow keys: left scrolls left where the real game's did (fraction)"] == 0.5
    # the same sign in trials 0 and 4 only: the world moved where the game stood, and the other way round
    assert out["arrow keys: scroll has the real game's sign, standstills too (fraction)"] == 2 / 8
    assert "arrow keys: the real game's right scrolls right (fraction)" not in score_directions(world, directions)
    # With the picture kept: of the right trials the world passed where the game scrolled (trial 0)
    # and the left one (trial 4), only trial 4 ended nearer the game's frame than standing still.
    kept = np.array([False, True, True, True, True, False, False, False])
    joint = score_directions(world, directions, real, kept)
    assert joint["arrow keys: right scrolls right where the real game's did, with the picture kept (fraction)"] == 0
    assert joint["arrow keys: left scrolls left where the real game's did, with the picture kept (fraction)"] == 0.5
    assert "arrow keys: right scrolls right where the real game's did, with the picture kept (fraction)" not in out
    # no real trial scrolled left: no conditional figure to read, rather than a division by zero
    still = score_directions(world, directions, np.where(real < 0, 0, real))
    assert "arrow keys: left scrolls left where the real game's did (fraction)" not in still


def test_a_probes_file_is_a_prompt_source(key_probes):
    from genie_env.prompts import load_prompts
    frames = load_prompts(key_probes, (64, 64))
    np.testing.assert_array_equal((frames * 255).round().byte().permute(0, 2, 3, 1).numpy(),
                                  load_key_probes(key_probes)["prompts"])


def test_export_refuses_probes_where_no_key_moved_the_game(key_probes, tmp_path):
    from trainers.export import probe_prompts
    real = load_key_probes(key_probes)["scroll"]
    both = int(((real[:, 0] > 0) & (real[:, 1] < 0)).sum())
    assert both > 0 and len(probe_prompts(key_probes, (32, 32), 8)) == both
    still = tmp_path / "still.h5"
    still.write_bytes(key_probes.read_bytes())
    with h5py.File(still, "a") as f:
        f["scroll"][...] = 0
    with pytest.raises(ValueError, match="in none of its 4 probes did both keys scroll"):
        probe_prompts(still, (32, 32), 8)
