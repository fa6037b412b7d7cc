"""The world model that ships inside the package: what `gym.make("Genie-v0")` gives a new user."""
import json
import warnings

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

import genie_env  # noqa: F401
from genie_env.checkpoint import load_checkpoint
from genie_env.bundled import bundled_paths


def test_bundled_files_are_small_and_safe():
    paths = bundled_paths()
    total = sum(paths[k].stat().st_size for k in ("tokenizer", "lam", "dynamics"))
    assert total <= 20 * 2**20, f"bundled checkpoints are {total / 2**20:.1f} MB"
    for kind in ("tokenizer", "lam", "dynamics"):
        ckpt = load_checkpoint(paths[kind], kind)  # weights_only: no pickled code
        assert "optimizer" not in ckpt
    assert len(list(paths["prompts"].glob("*.png"))) >= 4
    amap = json.loads((paths["prompts"].parent / "action_map.json").read_text())
    assert len({amap[k] for k in ("left", "right", "up", "down", "noop")}) == 5


def test_make_with_no_arguments_steps_a_thousand_times():
    env = gym.make("Genie-v0", device="cpu")
    assert env.action_space == gym.spaces.Discrete(8)
    assert env.observation_space.shape == (64, 64, 3)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    truncated = False
    for _ in range(1000):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(8)))
        assert obs.shape == (64, 64, 3) and np.isfinite(reward)
        if terminated:
            env.reset()
    assert truncated  # gym.make's 1000-step limit
    assert info["context_length"] == 7  # the bundled window: 8 frames


def test_bundled_env_passes_the_checker():
    env = gym.make("Genie-v0", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def test_sixteen_bundled_envs():
    envs = gym.make_vec("Genie-v0", num_envs=16, device="cpu")
    obs, _ = envs.reset(seed=0)
    assert len({o.tobytes() for o in obs}) > 1  # several prompts drawn
    obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert obs.shape == (16, 64, 64, 3) and rewards.shape == (16,) and "done_prob" in info


def test_eval_of_the_bundled_model_in_both_precisions(coinrun_dir, tmp_path, capsys):
    from genie_env.cli import main
    results = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert main(["eval", "--data_dir", str(coinrun_dir), "--clips", "8", "--out", str(out),
                     "--device", "cpu", "--dtype", dtype]) == 0
        results[dtype] = json.loads((out / "results.json").read_text())
        assert (out / "side_by_side.mp4").stat().st_size > 0
    assert "delta-t PSNR at t=4" in capsys.readouterr().out
    fp32, bf16 = results["float32"], results["bfloat16"]
    assert fp32["clips"] == bf16["clips"] == 8 and fp32["clip_len"] == 8
    # real CoinRun frames through the bundled tokenizer, and bf16 costs it little
    assert fp32["tokenizer PSNR (dB)"] > 15
    assert abs(fp32["tokenizer PSNR (dB)"] - bf16["tokenizer PSNR (dB)"]) < 0.5
    assert len(bf16["rollout PSNR by t, inferred actions (dB)"]) == 7
    assert fp32["LAM vs true actions: accuracy"] == bf16["LAM vs true actions: accuracy"]  # the LAM stays fp32
