"""The world model that ships inside the package: what `gym.make("Genie-v0")` gives a new user."""
import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import genie_env  # noqa: F401
from genie_env.checkpoint import config_from_checkpoint, load_checkpoint
import torch

from genie_env.bundled import bundled_paths
from genie_env.data.h5 import ClipDataset
from genie_env.data.probes import load_key_probes
from genie_env.metrics import colour_histograms, nearest_histogram_distance
from genie_env.prompts import load_prompts


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


def test_make_with_no_arguments_steps_three_hundred_times_and_stays_a_coinrun_scene(coinrun_dir):
    env = gym.make("Genie-v0", device="cpu")
    assert env.action_space == gym.spaces.Discrete(8)
    assert env.observation_space.shape == (64, 64, 3)
    assert env.spec.max_episode_steps == 1000  # the time limit itself is tested on tiny worlds (test_env)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    frames = []
    for t in range(1, 301):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(8)))
        assert obs.shape == (64, 64, 3) and np.isfinite(reward) and not truncated
        if t % 50 == 0:
            frames.append(obs)
        if terminated:
            env.reset()
    assert info["context_length"] == 7  # the bundled window: 8 frames
    # Drift: every 50th frame's colours stay about as close to some real CoinRun frame (the
    # fixture's 12 levels) as the bundled prompts, real frames of other levels, are. Frames gone
    # to noise or to one flat colour score 0.9 and more (1 = no colour in common).
    real = ClipDataset(coinrun_dir, clip_len=1, image_size=(64, 64))
    pick = np.linspace(0, len(real) - 1, 200).astype(int)
    reference = colour_histograms(torch.stack([real[int(i)]["frames"][0] for i in pick]))
    other_levels = nearest_histogram_distance(load_prompts(bundled_paths()["prompts"], (64, 64)), reference)
    generated = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    distance = nearest_histogram_distance(generated, reference)
    assert distance.max() < other_levels.max() + 0.15, (distance, other_levels)


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


def test_eval_of_the_bundled_model_in_both_precisions(coinrun_dir, key_probes, tmp_path, capsys):
    from PIL import Image

    from genie_env.cli import main
    results = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        probes = ["--key_probes", str(key_probes)] if dtype == "float32" else ["--drift_actions", "uniform", "data"]
        rows = 8 if dtype == "float32" else 4  # the default drift prompts, then --drift_prompts 4
        assert main(["eval", "--data_dir", str(coinrun_dir), "--clips", "8", "--out", str(out),
                     "--device", "cpu", "--dtype", dtype, "--horizon", "16", "--long_steps", "20",
                     "--drift_prompts", str(rows), *probes]) == 0
        results[dtype] = json.loads((out / "results.json").read_text())
        assert (out / "side_by_side.mp4").stat().st_size > 0
        # The drift episode's picture: a row per prompt, steps 0, 1, 10 and 20, frames drawn
        # 2x with 2 white pixels between them.
        assert results[dtype]["drift: prompts"] == rows
        drift_png = np.asarray(Image.open(out / "drift.png"))
        assert drift_png.shape == (rows * 130 - 2, 4 * 130 - 2, 3)
        assert (drift_png[128:130] == 255).all() and (drift_png[:, 128:130] == 255).all()
        tiles = [drift_png[r * 130:r * 130 + 128, c * 130:c * 130 + 128] for r in range(rows) for c in range(4)]
        assert all(t.std() > 0 for t in tiles)  # every tile is a frame, not the background
        assert json.loads((out / "results.json").read_text())["drift picture"] == str(out / "drift.png")
    # bfloat16's run also drifted under the codes as the data's player uses them: its own picture
    data_drift = "drift under the data's latent actions"
    freq = results["bfloat16"][data_drift + ": code frequencies"]
    assert len(freq) == 8 and sum(freq) == pytest.approx(1, abs=1e-3)
    assert 0 <= results["bfloat16"][data_drift + ": colour distance at step 20"] <= 1
    assert np.asarray(Image.open(tmp_path / "bfloat16" / "drift_data.png")).shape == (4 * 130 - 2, 4 * 130 - 2, 3)
    assert not any(k.startswith(data_drift) for k in results["float32"])
    assert "delta-t PSNR at t=4" in capsys.readouterr().out
    fp32, bf16 = results["float32"], results["bfloat16"]
    assert fp32["clips"] == bf16["clips"] == 8 and fp32["clip_len"] == 8
    # real CoinRun frames through the bundled tokenizer, and bf16 costs it little
    assert fp32["tokenizer PSNR (dB)"] > 15
    # The long clips' own reconstruction is the same tokenizer on other frames of the same data.
    assert abs(fp32["long clips: the real frames' reconstruction PSNR at t=16 (dB)"] - fp32["tokenizer PSNR (dB)"]) < 3
    # Only a k-means tokenizer's codes are pixel patches that can be scored alone.
    tok_cfg = config_from_checkpoint(load_checkpoint(bundled_paths()["tokenizer"], "tokenizer"))
    assert ("tokenizer PSNR, its pixel codes alone (dB)" in fp32) == (tok_cfg.model.quantizer == "kmeans")
    assert abs(fp32["tokenizer PSNR (dB)"] - bf16["tokenizer PSNR (dB)"]) < 0.5
    assert len(bf16["rollout PSNR by t, inferred actions (dB)"]) == 7
    assert fp32["LAM vs true actions: accuracy"] == bf16["LAM vs true actions: accuracy"]  # the LAM stays fp32
    # The LAM's agreement is read on more clips than the rollouts: all of this small data's.
    assert fp32["LAM vs true actions: transitions"] > 8 * 7
    assert fp32["LAM vs true actions: mutual information, bias-corrected (bits)"] < fp32["LAM vs true actions: mutual information (bits)"]
    for key in ("k-means baseline PSNR (dB)", "repeat-the-prompt PSNR at t=4 (dB)",
                "long clips: rollout PSNR at t=16, inferred actions (dB)",
                "long clips: repeat-the-prompt PSNR at t=16 (dB)",
                "long clips: the real frames' reconstruction PSNR at t=16 (dB)",
                "drift: colour distance at step 20", "drift: real held-out frames' colour distance",
                "arrow keys: right scrolls right (fraction)", "arrow keys: left scrolls left (fraction)"):
        assert key in fp32 and np.isfinite(fp32[key]), key
    assert fp32["arrow keys: trials"] == 64  # 8 prompts x 2 directions x 4 seeds
    # From the key probes' real states, read against the real game's own scroll there.
    real = load_key_probes(key_probes)["scroll"]
    on_probes = "arrow keys on key probes: "
    assert fp32[on_probes + "trials"] == 16  # 4 probes x 2 directions x 2 seeds
    assert fp32[on_probes + "the real game's right scrolls right (fraction)"] == (real[:, 0] > 0).mean()
    assert fp32[on_probes + "the real game's left scrolls left (fraction)"] == (real[:, 1] < 0).mean()
    assert 0 <= fp32[on_probes + "scroll has the real game's sign, standstills too (fraction)"] <= 1
    assert "arrow keys on key probes: trials" not in bf16
    # Fidelity under the held keys: the world's frames and the prompt held still, each against the
    # real game's frames under the key, step by step (the probes are 64x64, as the model).
    p = load_key_probes(key_probes)
    still = p["prompts"][:, None, None].astype(float) / 255
    mse = ((still - p["frames"].astype(float) / 255) ** 2).mean(axis=(-3, -2, -1))  # (probes, keys, steps)
    want = (10 * np.log10(1 / mse)).mean(axis=(0, 1))
    got = fp32[on_probes + "the prompt repeated, PSNR against them, by step (dB)"]
    assert np.allclose(got, want, atol=1e-3) and len(got) == p["steps"]
    world_psnr = fp32[on_probes + "PSNR against the real game's frames under the key, by step (dB)"]
    assert len(world_psnr) == p["steps"] and all(5 < x < 40 for x in world_psnr)
    recon = fp32[on_probes + "the prompt's reconstruction repeated, PSNR against them, by step (dB)"]
    # The bundled tokenizer (about 18 dB) costs the still reconstruction against the still prompt.
    assert len(recon) == p["steps"] and all(r < g for r, g in zip(recon, got))
    for key in ("right", "left"):  # a trial passes with the picture kept only if it passes at all
        where = f"{on_probes}{key} scrolls {key} where the real game's did"
        if where + " (fraction)" in fp32:  # only when the real game scrolled that way on a probe
            assert 0 <= fp32[where + ", with the picture kept (fraction)"] <= fp32[where + " (fraction)"]
    # These seeded episodes scroll in some consecutive pairs, so every scrolling share is read.
    assert fp32["scrolling: consecutive real frame pairs that scroll sideways"] > 0
    for who in ("tokenizer reconstruction", "k-means baseline", "rollout, inferred actions", "rollout, random actions",
                "one step from the real past, inferred actions",
                "one step from the real past, the real next frame's reconstruction"):
        assert 0 <= fp32[f"scrolling: {who} scrolls alike (fraction)"] <= 1, who
    first_pass = "first MaskGIT pass from the real past: "
    assert 0 < fp32[first_pass + "tokens that change from the frame before (fraction)"] < 1
    for what in ("changing tokens predicted right", "changing tokens predicted as the frame before's",
                 "staying tokens predicted right"):
        assert 0 <= fp32[f"{first_pass}{what} (fraction)"] <= 1, what
    # One step from the real past, against holding the real frame still: CoinRun moves little
    # per frame, and the bundled tokenizer alone (about 18 dB) keeps its prediction below that.
    one = fp32["one step from the real past, inferred actions: PSNR (dB)"]
    assert 10 < one < fp32["one step from the real past: repeat-the-frame PSNR (dB)"]
    assert fp32["one step from the real past: the frame's reconstruction repeated, PSNR (dB)"] < fp32[
        "one step from the real past: repeat-the-frame PSNR (dB)"]
    # The 8-frame clips' t=4 figures are their own, not the long clips' (which once overwrote them).
    by_t = fp32["rollout PSNR by t, inferred actions (dB)"]  # rounded to 3 decimals
    assert abs(fp32["rollout PSNR at t=4, inferred actions (dB)"] - by_t[3]) < 1e-3


@pytest.mark.parametrize("flag, values, key", [("--commit_noise", ("0", "4"), "commit noise"),
                                               ("--temperature", ("1", "0"), "temperature"),
                                               ("--maskgit_steps", ("8", "2"), "MaskGIT steps"),
                                               ("--action_guidance", ("0", "2"), "action guidance"),
                                               ("--sampled_passes", ("8", "1"), "MaskGIT passes that sample")])
def test_eval_sampler_options_change_the_rollouts_only(coinrun_dir, tmp_path, flag, values, key):
    from genie_env.cli import main
    results = {}
    for value in values:
        assert main(["eval", "--data_dir", str(coinrun_dir), "--clips", "4", "--out", str(tmp_path / value),
                     "--device", "cpu", "--horizon", "0", "--long_steps", "0", flag, value]) == 0
        results[value] = json.loads((tmp_path / value / "results.json").read_text())
    first, second = (results[v] for v in values)
    assert (first[key], second[key]) == tuple(float(v) for v in values)
    assert first["tokenizer PSNR (dB)"] == second["tokenizer PSNR (dB)"]
    assert first["rollout PSNR by t, inferred actions (dB)"] != second["rollout PSNR by t, inferred actions (dB)"]
    assert main(["eval", "--data_dir", str(coinrun_dir), flag, "-1", "--device", "cpu"]) == 2
    integer = flag in ("--maskgit_steps", "--sampled_passes")
    if not integer:  # argparse refuses "nan" for an integer flag itself
        assert main(["eval", "--data_dir", str(coinrun_dir), flag, "nan", "--device", "cpu"]) == 2
    if integer:
        assert main(["eval", "--data_dir", str(coinrun_dir), flag, "0", "--device", "cpu"]) == 2
    assert main(["eval", "--data_dir", str(coinrun_dir), "--action_clips", "0", "--device", "cpu"]) == 2
    assert main(["eval", "--data_dir", str(coinrun_dir), "--clips", "8", "--drift_prompts", "9",
                 "--device", "cpu"]) == 2
    assert main(["eval", "--data_dir", str(coinrun_dir), "--drift_prompts", "0", "--device", "cpu"]) == 2


def test_filmstrip_of_the_bundled_model_with_a_held_out_clip(coinrun_dir, tmp_path):
    from PIL import Image

    from genie_env.cli import main
    from genie_env.filmstrip import LABEL_WIDTH
    out = tmp_path / "strip.png"
    assert main(["filmstrip", "--data_dir", str(coinrun_dir), "--split", "all", "--frames", "8",
                 "--scale", "1", "--device", "cpu", "--out", str(out)]) == 0
    img = np.asarray(Image.open(out))
    # 8 action rows + ground truth, reconstruction and two rollouts, each 64 pixels + a 2-pixel gap.
    assert img.shape == (12 * 66, LABEL_WIDTH + 9 * 64, 3)
    truth, recon = img[8 * 66:8 * 66 + 64, LABEL_WIDTH:], img[9 * 66:9 * 66 + 64, LABEL_WIDTH:]
    err = np.abs(truth.astype(float) - recon.astype(float)).mean()
    assert err < 20  # the reconstruction row shows the clip, not something else
