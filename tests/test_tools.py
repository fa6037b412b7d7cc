import importlib.util
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pygame
import pytest

from genie_env.cli import main
from genie_env.play import play
from genie_env.video import read_video

ROOT = Path(__file__).resolve().parents[1]


def _example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def prompt_png(world, tmp_path):
    from PIL import Image
    path = tmp_path / "prompt.png"
    Image.fromarray(world["prompts"][0]).save(path)
    return path


def test_generate_writes_a_readable_video(world, prompt_png, tmp_path):
    base = ["generate", "--prompt", str(prompt_png), "--tokenizer_path", str(world["tok"]),
            "--dynamics_path", str(world["dyn"]), "--num_frames", "6", "--device", "cpu", "--scale", "2"]
    assert main(base + ["--actions", "0,1,2,3", "--output", str(tmp_path / "out.mp4")]) == 0
    video = read_video(tmp_path / "out.mp4")
    assert video.shape == (6, 32, 32, 3)
    assert main(base + ["--actions", "3", "--output", str(tmp_path / "out.gif")]) == 0
    assert read_video(tmp_path / "out.gif").shape == (6, 32, 32, 3)
    # The same seed and actions give the same video; other actions another one.
    assert main(base + ["--actions", "0,1,2,3", "--output", str(tmp_path / "again.mp4")]) == 0
    assert np.array_equal(read_video(tmp_path / "again.mp4"), video)


def test_mp4_of_the_same_frames_is_the_same_file(tmp_path):
    # x264's default rate control once made tiny videos differ run to run after a decode.
    from genie_env.video import write_video
    frames = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    first = write_video(tmp_path / "0.mp4", frames, scale=2).read_bytes()
    for i in range(1, 40):
        path = write_video(tmp_path / f"{i}.mp4", frames, scale=2)
        read_video(path)
        assert path.read_bytes() == first, f"write {i} differs"


def test_without_pyav_gifs_still_write_and_mp4_names_the_fix(tmp_path):
    # Training and GIFs need no PyAV (a GPU image may lack it); an mp4 then says what to install.
    import subprocess
    code = ("import sys; sys.modules['av'] = None\n"
            "import numpy as np, trainers.train_dynamics\n"
            "from genie_env.video import write_video\n"
            "f = np.zeros((2, 8, 8, 3), np.uint8)\n"
            f"write_video({str(tmp_path / 'a.gif')!r}, f)\n"
            "try:\n"
            f"    write_video({str(tmp_path / 'a.mp4')!r}, f)\n"
            "except RuntimeError as e:\n"
            "    print('refused:', e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "refused:" in res.stdout and "pip install av" in res.stdout
    assert (tmp_path / "a.gif").exists() and not (tmp_path / "a.mp4").exists()


def test_generate_rejects_bad_actions(world, prompt_png, tmp_path, capsys):
    argv = ["generate", "--prompt", str(prompt_png), "--tokenizer_path", str(world["tok"]),
            "--dynamics_path", str(world["dyn"]), "--device", "cpu", "--output", str(tmp_path / "o.mp4")]
    assert main(argv + ["--actions", "0,9"]) == 2
    assert "this model has 4 latent actions" in capsys.readouterr().err
    assert main(argv + ["--actions", "left"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_play_runs_headless_with_scripted_keys(world, tmp_path):
    env = gym.make("Genie-v0", tokenizer_path=world["tok"], dynamics_path=world["dyn"],
                   prompt=world["prompts"], device="cpu")
    record = tmp_path / "play.mp4"
    keys = [pygame.K_1, pygame.K_v, pygame.K_RIGHT, pygame.K_d, pygame.K_4, pygame.K_v, pygame.K_r, pygame.K_2]
    stats = play(env, scale=2, record=record, fps=1000, script=keys, action_map={"left": 0, "right": 3, "up": 2,
                                                                                 "down": 1, "noop": 0})
    assert stats == {"steps": 7, "resets": 2, "recordings": 1}
    assert read_video(record).shape[0] == 5  # the frame when v was pressed + 4 steps


@pytest.mark.parametrize("argv, match", [
    (["generate", "--num_frames", "0"], "--num_frames must be >= 1, got 0"),
    (["generate", "--fps", "0"], "--fps must be >= 1, got 0"),
    (["generate", "--maskgit_steps", "0"], "maskgit_steps must be an integer >= 1"),
    (["generate", "--temperature", "-2"], "temperature must be a finite number >= 0"),
    (["generate", "--action_guidance", "-2"], "action_guidance must be a finite number >= 0"),
    (["filmstrip", "--action_guidance", "nan"], "action_guidance must be a finite number >= 0"),
    (["generate", "--dtype", "half-ish"], "unknown dtype 'half-ish'"),
    (["play", "--scale", "0"], "--scale must be >= 1, got 0"),
    (["filmstrip", "--frames", "0"], "--frames must be >= 1, got 0"),
])
def test_tool_flags_are_checked(world, tmp_path, capsys, argv, match):
    paths = ["--tokenizer_path", str(world["tok"]), "--dynamics_path", str(world["dyn"]), "--device", "cpu"]
    assert main([*argv, *paths]) == 2
    assert match in capsys.readouterr().err


def test_filmstrip_shows_every_action_from_the_prompt(world, prompt_png, tmp_path):
    from PIL import Image

    from genie_env.filmstrip import LABEL_WIDTH
    out = tmp_path / "strip.png"
    assert main(["filmstrip", "--tokenizer_path", str(world["tok"]), "--dynamics_path", str(world["dyn"]),
                 "--prompt", str(prompt_png), "--frames", "5", "--scale", "2",
                 "--device", "cpu", "--out", str(out)]) == 0
    img = np.asarray(Image.open(out))
    # 4 latent actions, each a row of the prompt + 5 frames of 16x16 pixels at scale 2.
    assert img.shape == (4 * (32 + 2), LABEL_WIDTH + 6 * 32, 3)
    rows = [img[r * 34:r * 34 + 32, LABEL_WIDTH:] for r in range(4)]
    assert all(np.array_equal(r[:, :32], rows[0][:, :32]) for r in rows)  # every row starts at the prompt
    assert not all(np.array_equal(r, rows[0]) for r in rows)  # and the actions lead apart


def test_ppo_example_trains_in_the_vector_env(world):
    agent = _example("train_agent")
    args = agent.Args(num_envs=4, num_steps=8, total_steps=64, device="cpu", tokenizer_path=str(world["tok"]),
                      dynamics_path=str(world["dyn"]), prompt=None, max_episode_steps=5)
    args_prompt = world["dir"] / "prompts"
    args_prompt.mkdir(exist_ok=True)
    from PIL import Image
    for i, p in enumerate(world["prompts"]):
        Image.fromarray(p).save(args_prompt / f"{i}.png")
    args.prompt = str(args_prompt)
    out = agent.train(args)
    assert len(out["mean_reward"]) == 2 and all(np.isfinite(out["mean_reward"]))


def test_ppo_example_never_trains_on_an_ignored_action(world):
    # Each stored transition must be one where the env applied the agent's action: with a reward
    # that echoes the action, every step's reward is action + 1, also at episode ends (NEXT_STEP
    # auto-reset would return 0 for the step that resets).
    agent = _example("train_agent")
    args = agent.Args(num_envs=3, device="cpu", tokenizer_path=str(world["tok"]), dynamics_path=str(world["dyn"]),
                      prompt=None, max_episode_steps=2)
    envs = agent.make_envs(args, reward_fn=lambda prev, action, obs: action + 1.0)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(6):
        actions = rng.integers(0, 4, 3)
        _, reward, term, trunc, _ = envs.step(actions)
        assert np.array_equal(reward, actions + 1.0)
        ends += int((term | trunc).sum())
    assert ends >= 6  # episodes did end along the way


def test_stable_baselines3_learns_on_the_batched_env(world):
    from stable_baselines3 import PPO

    from genie_env.sb3 import GenieSB3VecEnv
    venv = GenieSB3VecEnv(num_envs=2, tokenizer_path=world["tok"], dynamics_path=world["dyn"],
                          prompt=world["prompts"], device="cpu", max_episode_steps=3)
    venv.seed(5)
    obs = venv.reset()
    assert obs.shape == (2, 16, 16, 3)
    for _ in range(3):
        obs, rewards, dones, infos = venv.step(np.array([1, 2]))
    assert dones.all() and infos[0]["TimeLimit.truncated"]
    assert infos[0]["terminal_observation"].shape == (16, 16, 3)
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=16)
    assert model.num_timesteps >= 16


def test_compare_evals_reads_each_model_figure_in_its_direction(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("compare_evals", ROOT / "scripts" / "compare_evals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    old = {"clips": 64, "tokenizer PSNR (dB)": 19.0, "tokenizer codebook perplexity": 100.0,
           "drift: colour distance at step 1": 0.40, "rollout PSNR by t, inferred actions (dB)": [18.0, 17.0],
           "long clips: repeat-the-prompt PSNR at t=4 (dB)": 29.0, "LAM codebook usage": 1.0,
           "one step from the real past, inferred actions: PSNR (dB)": 18.7}
    new = dict(old, **{"clips": 32, "tokenizer PSNR (dB)": 28.5, "tokenizer codebook perplexity": 200.0,
                       "drift: colour distance at step 1": 0.45, "rollout PSNR by t, inferred actions (dB)": [24.0, 16.0],
                       "long clips: repeat-the-prompt PSNR at t=4 (dB)": 1.0,
                       "one step from the real past, inferred actions: PSNR (dB)": 23.8})
    paths = [tmp_path / "old.json", tmp_path / "new.json"]
    for path, d in zip(paths, (old, new)):
        path.write_text(json.dumps(d))
    assert module.main([str(paths[0]), str(paths[1]), "256", "1024"]) == 0
    lines = {line.split(":")[0][6:]: line[:5].strip() for line in capsys.readouterr().out.splitlines()[:-1]}
    assert lines == {"tokenizer PSNR (dB)": "win", "tokenizer codebook perplexity": "win",
                     "tokenizer codebook perplexity as a share of the codes": "LOSE",  # 39% -> 20% of the codes
                     "drift": "LOSE",  # a larger colour distance is worse
                     "rollout PSNR by t, inferred actions (dB)": "MIX", "LAM codebook usage": "tie",
                     "one step from the real past, inferred actions": "win"}  # baselines and counts are left out
    assert module.main([str(paths[0])]) == 2
