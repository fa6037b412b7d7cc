import importlib.util
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


def test_rightward_progress_measures_the_scroll():
    agent = _example("train_agent")
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (16, 40, 3), dtype=np.uint8)
    prev, moved_right = scene[:, 10:26], scene[:, 13:29]  # the view slides right: the scene moves left
    assert agent.rightward_progress(prev, 0, moved_right) == 3
    assert agent.rightward_progress(moved_right, 0, prev) == -3
    assert agent.rightward_progress(prev, 0, prev) == 0


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
