import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import genie_env  # noqa: F401  (registers Genie-v0)
from genie_env.checkpoint import CheckpointError, load_model, save_checkpoint
from genie_env.config import StageConfig
from genie_env.env import GenieEnv
from genie_env.vector_env import GenieVectorEnv
from genie_env.models import DynamicsModel
from tests.tiny import dynamics_cfg


def make(world, heads=False, **kw):
    return gym.make("Genie-v0", tokenizer_path=world["tok"], dynamics_path=world["heads" if heads else "dyn"],
                    prompt=world["prompts"], device="cpu", **kw)


def rollout(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    frames, tokens = [obs], []
    for a in actions:
        obs, _, _, _, info = env.step(a)
        frames.append(obs)
        tokens.append(info["tokens"])
    return np.stack(frames), np.stack(tokens)


def test_passes_gymnasium_env_checker_without_warnings(world):
    env = make(world)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    assert env.action_space == gym.spaces.Discrete(4)
    assert env.observation_space == gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)


def test_same_seed_and_actions_give_the_same_frames(world):
    env = make(world)
    actions = [0, 3, 1, 2, 2, 0]
    a = rollout(env, 7, actions)
    b = rollout(env, 7, actions)
    c = rollout(env, 8, actions)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("guidance", [None, 1.5])
def test_cached_step_equals_full_recompute(world, guidance):
    env = make(world, action_guidance=guidance).unwrapped
    obs, info = env.reset(seed=3)
    gen_state = env._gen.get_state()
    actions = [1, 0, 3]  # 4 frames: the whole window
    tokens = [torch.as_tensor(info["tokens"])]
    for a in actions:
        tokens.append(torch.as_tensor(env.step(a)[4]["tokens"]))
    dyn = load_model(world["dyn"])
    g = torch.Generator().manual_seed(0)
    g.set_state(gen_state)
    for t, a in enumerate(actions):
        ctx = torch.stack(tokens[: t + 1])[None]
        acts = torch.tensor(actions[:t], dtype=torch.long)[None]
        ref = dyn.sample_next_uncached(ctx, acts, torch.tensor([a]), generators=[g], guidance=guidance)
        assert torch.equal(ref[0], tokens[t + 1]), f"step {t + 1}"
    if guidance:  # the guided world is another world: the same seed and actions give other frames
        assert not np.array_equal(rollout(make(world), 3, actions)[1], np.stack([t.numpy() for t in tokens[1:]]))


def test_window_slides_past_the_context_limit(world):
    env = make(world)
    env.reset(seed=0)
    lengths = [env.step(i % 4)[4]["context_length"] for i in range(12)]
    assert lengths == [2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]  # max_frames 4 = 3 cached + the new frame
    obs = env.step(0)[0]
    assert obs.shape == (16, 16, 3) and obs.dtype == np.uint8


@pytest.mark.parametrize("guidance", [None, 1.5])
def test_vector_env_equals_single_envs(world, guidance):
    venv = gym.make_vec("Genie-v0", num_envs=3, tokenizer_path=world["tok"], dynamics_path=world["dyn"],
                        prompt=world["prompts"], device="cpu", max_episode_steps=4, action_guidance=guidance)
    assert isinstance(venv.unwrapped, genie_env.vector_env.GenieVectorEnv)
    obs, _ = venv.reset(seed=11)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 4, (4, 3))
    vec_frames = [obs] + [venv.step(a)[0] for a in actions]
    for i in range(3):
        frames, _ = rollout(make(world, action_guidance=guidance), 11 + i, actions[:, i].tolist())
        assert np.array_equal(np.stack([f[i] for f in vec_frames]), frames), f"env {i}"
    if guidance:  # and the guidance reached the vector env's world
        assert not np.array_equal(np.stack([f[0] for f in vec_frames]), rollout(make(world), 11, actions[:, 0].tolist())[0])


def test_vector_env_infos_equal_single_env_infos(world):
    # One step rule: env i of a vector env reports what a single env seeded alike reports.
    def reward_fn(prev, action, obs):
        return float(action) + float(obs.mean() > prev.mean())

    venv = gym.make_vec("Genie-v0", num_envs=3, tokenizer_path=world["tok"], dynamics_path=world["heads"],
                        prompt=world["prompts"], device="cpu", max_episode_steps=3, reward_fn=reward_fn)
    venv.reset(seed=5)
    singles = [make(world, heads=True, max_episode_steps=3, reward_fn=reward_fn) for _ in range(3)]
    for i, env in enumerate(singles):
        env.reset(seed=5 + i)
    live = [True] * 3  # a single env is compared until its episode ends; the vector env then resets it
    for actions in ([0, 1, 2], [3, 3, 1], [2, 0, 1]):
        _, rewards, terminated, truncated, infos = venv.step(np.array(actions))
        for i, env in enumerate(singles):
            if not live[i]:
                continue
            _, reward, term, trunc, info = env.step(actions[i])
            live[i] = not (term or trunc)
            assert (reward, term, trunc) == (rewards[i], terminated[i], truncated[i])
            assert set(info) == {"tokens", "context_length", "learned_reward", "done_prob"}
            for key in ("tokens", "context_length"):
                assert np.array_equal(infos[key][i], info[key]), key
            for key in ("learned_reward", "done_prob"):  # a batched matmul rounds differently
                assert np.isclose(infos[key][i], info[key], rtol=1e-4, atol=1e-6), key
            assert all(infos[f"_{key}"][i] for key in info)


@pytest.mark.parametrize("kwargs, match", [
    (dict(maskgit_steps=0), r"maskgit_steps must be an integer >= 1"),
    (dict(maskgit_steps=2.5), r"maskgit_steps must be an integer >= 1"),
    (dict(temperature=-1.0), r"temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), r"temperature must be a finite number >= 0"),
    (dict(action_guidance=-1.0), r"action_guidance must be a finite number >= 0 \(0: off\), got -1.0 \(or None"),
    (dict(max_episode_steps=0), r"max_episode_steps must be an integer >= 1"),
    (dict(render_mode="ansi"), r"render_mode must be one of \['rgb_array', 'human'\]"),
    (dict(reward_fn=3), r"reward_fn must be a function"),
    (dict(dtype="int8"), r"unknown dtype 'int8'"),
    (dict(device="tpu"), r"unknown device 'tpu'"),
])
def test_bad_constructor_arguments_say_what_is_allowed(world, kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenieEnv(tokenizer_path=world["tok"], dynamics_path=world["dyn"], prompt=world["prompts"],
                 **{"device": "cpu", **kwargs})
    vec_kwargs = {k: v for k, v in kwargs.items() if k != "render_mode"}
    if vec_kwargs:
        with pytest.raises(ValueError, match=match):
            GenieVectorEnv(2, tokenizer_path=world["tok"], dynamics_path=world["dyn"], prompt=world["prompts"],
                           **{"device": "cpu", **vec_kwargs})


def test_vector_env_arguments_of_its_own_are_checked(world):
    with pytest.raises(ValueError, match=r"number of worlds must be an integer >= 1, got 0"):
        GenieVectorEnv(0, tokenizer_path=world["tok"], dynamics_path=world["dyn"], device="cpu")
    with pytest.raises(ValueError, match=r"render_mode must be one of \['rgb_array'\]"):
        GenieVectorEnv(2, tokenizer_path=world["tok"], dynamics_path=world["dyn"], device="cpu", render_mode="human")


def test_float_prompts_outside_zero_one_are_refused(world):
    env = make(world)
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\], found values in \[0, 255\]\. "
                                         r"They look like 0-255 values: divide by 255"):
        env.reset(options={"prompt": np.linspace(0, 255, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)})
    with pytest.raises(ValueError, match=r"found values in \[-1, 0\.5\]\. Rescale them to \[0, 1\]"):
        env.reset(options={"prompt": np.linspace(-1, 0.5, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)})
    obs, _ = env.reset(options={"prompt": np.full((16, 16, 3), 0.5, np.float32)})  # in range: accepted
    assert obs.shape == (16, 16, 3)


def test_vector_env_auto_resets_each_env(world):
    venv = gym.make_vec("Genie-v0", num_envs=2, tokenizer_path=world["tok"], dynamics_path=world["dyn"],
                        prompt=world["prompts"], device="cpu", max_episode_steps=3)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    venv.reset(seed=0, options={"reset_mask": np.array([True, True])})
    venv.step(np.array([0, 0]))
    venv.reset(options={"reset_mask": np.array([False, True])})  # env 1 restarts: out of step
    truncs = [venv.step(np.array([1, 2]))[3].tolist() for _ in range(4)]
    assert truncs == [[False, False], [True, False], [False, True], [False, False]]
    same = gym.make_vec("Genie-v0", num_envs=2, tokenizer_path=world["tok"], dynamics_path=world["dyn"],
                        prompt=world["prompts"], device="cpu", max_episode_steps=2, autoreset_mode="SameStep")
    same.reset(seed=0)
    same.step(np.array([0, 0]))
    obs, _, _, trunc, info = same.step(np.array([0, 0]))
    assert trunc.all() and info["final_obs"].shape == (2, 16, 16, 3)


def test_vector_env_takes_a_prompt_per_env(world):
    venv = gym.make_vec("Genie-v0", num_envs=3, tokenizer_path=world["tok"], dynamics_path=world["dyn"],
                        prompt=world["prompts"], device="cpu")
    own = [world["prompts"][4], world["prompts"][1], world["prompts"][4]]
    obs, _ = venv.reset(seed=0, options={"prompt": own})
    single = make(world)
    for i, p in enumerate(own):
        assert np.array_equal(obs[i], single.reset(seed=i, options={"prompt": p})[0])
    assert np.array_equal(obs[0], obs[2]) and not np.array_equal(obs[0], obs[1])


def test_sixteen_envs_step_together(world):
    venv = gym.make_vec("Genie-v0", num_envs=16, tokenizer_path=world["tok"], dynamics_path=world["dyn"],
                        prompt=world["prompts"], device="cpu")
    obs, _ = venv.reset(seed=0)
    obs, rew, term, trunc, info = venv.step(venv.action_space.sample())
    assert obs.shape == (16, 16, 16, 3) and rew.shape == (16,) and info["tokens"].shape == (16, 16)


def test_learned_heads_and_reward_fn(world):
    env = make(world, heads=True)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(1)
    assert reward == pytest.approx(info["learned_reward"]) and 0 <= info["done_prob"] <= 1
    assert terminated == (info["done_prob"] > 0.5)
    calls = []

    def brightness_gain(prev, action, obs):
        calls.append(action)
        return float(obs.mean() - prev.mean())

    env = make(world, heads=True, reward_fn=brightness_gain)
    prev, _ = env.reset(seed=0)
    obs, reward, _, _, _ = env.step(2)
    assert calls == [2] and reward == pytest.approx(obs.mean() - prev.mean())
    plain = make(world)
    plain.reset(seed=0)
    assert plain.step(0)[1:3] == (0.0, False)


def test_prompts(world, tmp_path):
    env = make(world)
    obs, info = env.reset(seed=0, options={"prompt": np.zeros((16, 16, 3), np.uint8)})
    assert info["prompt_index"] == 0
    big = np.zeros((64, 64, 3), np.uint8)  # same aspect ratio: resized
    assert env.reset(options={"prompt": big})[0].shape == (16, 16, 3)
    from PIL import Image
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "p.png")
    assert env.reset(options={"prompt": str(tmp_path / "p.png")})[0].shape == (16, 16, 3)
    with pytest.raises(ValueError, match="prompt frames are 16x40 but the model needs 16x16"):
        env.reset(options={"prompt": np.zeros((16, 40, 3), np.uint8)})
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        env.reset(options={"prompt": np.zeros((16, 16, 7), np.uint8)})
    with pytest.raises(ValueError, match="prompt not found"):
        env.reset(options={"prompt": str(tmp_path / "nope.png")})


def test_invalid_actions_and_bad_checkpoints(world):
    env = make(world)
    with pytest.raises(RuntimeError, match="call reset"):
        env.unwrapped.step(0)
    env.reset(seed=0)
    for bad in (4, -1, 1.5, "left"):
        with pytest.raises(ValueError, match=r"invalid action .*integer in \[0, 4\)"):
            env.step(bad)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        GenieEnv(tokenizer_path=world["dir"] / "missing.pt", dynamics_path=world["dyn"], device="cpu")
    with pytest.raises(CheckpointError, match="holds a dynamics model, but a tokenizer"):
        GenieEnv(tokenizer_path=world["dyn"], dynamics_path=world["dyn"], device="cpu")
    other = DynamicsModel(dynamics_cfg(token_grid=(2, 2), vocab_size=16))
    save_checkpoint(world["dir"] / "other.pt", other, StageConfig("dynamics", other.cfg))
    with pytest.raises(ValueError, match="does not match the dynamics model"):
        GenieEnv(tokenizer_path=world["tok"], dynamics_path=world["dir"] / "other.pt", device="cpu")
    venv = gym.make_vec("Genie-v0", num_envs=2, tokenizer_path=world["tok"], dynamics_path=world["dyn"],
                        prompt=world["prompts"], device="cpu")
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"2 integers in \[0, 4\)"):
        venv.step(np.array([0, 9]))


def test_render_modes(world):
    env = make(world, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert np.array_equal(frame, obs) and frame is not env.render()
    human = make(world, render_mode="human")  # SDL_VIDEODRIVER=dummy in conftest
    human.reset(seed=0)
    human.step(1)
    assert human.unwrapped._renderer.screen.get_size() == (128, 128)
    human.close()


def test_dtype_choices():
    from genie_env.device import resolve_dtype
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == resolve_dtype("fp32", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == resolve_dtype(torch.bfloat16, cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="needs a GPU"):
        resolve_dtype("float16", cpu)
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", cpu)


def test_bfloat16_world(world):
    envs = {dt: make(world, heads=True, dtype=dt) for dt in ("float32", "bfloat16")}
    w = envs["bfloat16"].unwrapped.world
    assert w.dtype == torch.bfloat16 and w.dyn_cache.keys[0].dtype == torch.bfloat16
    assert next(w.dynamics.parameters()).dtype == torch.bfloat16
    actions = [0, 3, 1, 2, 2, 0]
    frames, tokens = rollout(envs["bfloat16"], 5, actions)
    again, _ = rollout(envs["bfloat16"], 5, actions)
    assert frames.dtype == np.uint8 and frames.shape == (7, 16, 16, 3)
    assert np.array_equal(frames, again)
    # the prompt through the bf16 tokenizer looks like it does in float32
    ref, ref_tokens = rollout(envs["float32"], 5, actions)
    assert np.abs(frames[0].astype(int) - ref[0].astype(int)).mean() < 4
    assert (tokens == ref_tokens).mean() > 0.9  # same generator draws, near-equal probabilities
    _, _, _, _, info = envs["bfloat16"].step(1)
    assert np.isfinite(info["learned_reward"]) and 0 <= info["done_prob"] <= 1


def test_compiled_vector_env_matches_eager_through_partial_resets(world):
    def tokens(compile):
        envs = gym.make_vec("Genie-v0", num_envs=4, tokenizer_path=world["tok"], dynamics_path=world["dyn"],
                            prompt=world["prompts"], device="cpu", max_episode_steps=5, compile=compile)
        envs.reset(seed=0)
        out = []
        for s in range(14):
            if s == 2:  # envs 0 and 1 restart: from here on, auto-resets step only some rows
                envs.reset(options={"reset_mask": np.array([True, True, False, False])})
            out.append(envs.step(np.arange(4) % 4)[4]["tokens"])
        return np.stack(out)

    assert np.array_equal(tokens(False), tokens(True))


def test_world_results_are_ordinary_tensors(world):
    env = make(world, heads=True).unwrapped
    env.reset(seed=0)
    frames = env.world.reset(torch.rand(1, 3, 16, 16))
    out = env.world.step(torch.tensor([1]))
    for t in (frames, out.frames, out.tokens, out.reward, out.done_prob):
        assert not t.is_inference()
        t.mul_(1)  # a caller may modify them in place
