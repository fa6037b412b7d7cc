import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genie_env.checkpoint import load_checkpoint, load_model
from genie_env.config import load_config
from genie_env.data.h5 import ClipDataset
from trainers import train_dynamics, train_lam, train_tokenizer
from trainers.loop import StepBatchSampler, TrainingError, build_datasets, spread_clips, train

ROOT = Path(__file__).resolve().parents[1]

MICRO = {
    "tokenizer": dict(image_size=[32, 32], patch_size=8, num_codes=64, code_dim=16, enc_layers=1, enc_dim=48,
                      enc_heads=2, dec_layers=1, dec_dim=48, dec_heads=2, max_frames=4),
    "lam": dict(image_size=[32, 32], patch_size=16, num_actions=4, action_dim=8, enc_layers=1, enc_dim=48,
                enc_heads=2, dec_layers=1, dec_dim=48, dec_heads=2, max_frames=4),
    "dynamics": dict(token_grid=[4, 4], vocab_size=64, num_actions=4, num_layers=1, d_model=48, num_heads=2,
                     qk_dim=16, max_frames=4, maskgit_steps=2),
}


def micro_config(tmp_path, kind, steps=8, **train_kw):
    cfg = {"kind": kind, "model": MICRO[kind], "data": {"clip_len": 4, "num_workers": 0},
           "train": {"batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "max_steps": steps, "bf16": False,
                     "log_every": 2, "eval_every": 4, "save_every": 4, "image_every": 4, "val_batches": 1,
                     **train_kw}}
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def args_for(parser, config, data_dir, out_dir, *extra):
    return parser.parse_args(["--config", str(config), "--data_dir", str(data_dir), "--device", "cpu",
                              "--out_dir", str(out_dir), *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, coinrun_dir):
    """The three micro stages trained in order, as the seed's commands do."""
    tmp = tmp_path_factory.mktemp("trained")
    out = tmp / "ckpt"
    tok = train_tokenizer.main(args_for(train_tokenizer.base_parser("tokenizer"),
                                        micro_config(tmp, "tokenizer", steps=80), coinrun_dir, out))
    lam = train_lam.main(args_for(train_lam.base_parser("lam"), micro_config(tmp, "lam", steps=80), coinrun_dir, out))
    dyn = train_dynamics.main(args_for(train_dynamics.parser(), micro_config(tmp, "dynamics", steps=30),
                                       coinrun_dir, out, "--tokenizer_path", str(tok), "--lam_path", str(lam)))
    return {"tmp": tmp, "out": out, "tokenizer": tok, "lam": lam, "dynamics": dyn}


def _val_batch(coinrun_dir):
    ds = ClipDataset(coinrun_dir, clip_len=4, image_size=(32, 32), split="val")
    return torch.stack([ds[i]["frames"] for i in range(min(4, len(ds)))])


def test_stages_write_loadable_checkpoints_and_losses_fall(trained, coinrun_dir):
    out = trained["out"]
    for kind, steps in (("tokenizer", 80), ("lam", 80), ("dynamics", 30)):
        names = {p.name for p in (out / kind).glob("*.pt")}
        assert names == {f"checkpoint_step_{s}.pt" for s in [*range(4, steps, 4), steps]} | {"latest.pt"}
        assert load_checkpoint(out / kind / "latest.pt")["step"] == steps
        assert (out / kind / "tb").is_dir() and any((out / kind / "tb").iterdir())
    video = _val_batch(coinrun_dir)
    torch.manual_seed(0)
    for kind, trainer in (("tokenizer", train_tokenizer), ("lam", train_lam)):
        cfg = load_config(trained["tmp"] / f"{kind}.yaml")
        fresh = trainer.make_task(cfg).model.eval()
        model = load_model(trained[kind], kind)
        before = fresh(video)["recon_loss"].item()
        after = model(video)["recon_loss"].item()
        assert after < 0.7 * before, (kind, before, after)
    tok = load_model(trained["tokenizer"], "tokenizer")
    lam = load_model(trained["lam"], "lam")
    dyn_cfg = load_config(trained["tmp"] / "dynamics.yaml")
    fresh = train_dynamics.make_task(dyn_cfg, tok, lam).model.eval()
    dyn = load_model(trained["dynamics"], "dynamics")
    tokens, actions = tok.encode(video), lam.infer_actions(video)
    rate = torch.full((video.shape[0],), 0.75)
    torch.manual_seed(1)
    before = fresh(tokens, actions, mask_rate=rate)["ce"].item()
    torch.manual_seed(1)
    after = dyn(tokens, actions, mask_rate=rate)["ce"].item()
    assert after < 0.8 * before, (before, after)


def test_seed_commands_run_as_documented(trained, coinrun_dir, tmp_path):
    # The exact flags, as a user types them, with --device cpu.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "trainers.train_dynamics", "--config", str(trained["tmp"] / "dynamics.yaml"),
           "--data_dir", str(coinrun_dir), "--tokenizer_path", str(trained["tokenizer"]),
           "--lam_path", str(trained["lam"]), "--device", "cpu", "--out_dir", str(tmp_path), "--max_steps", "2"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert isinstance(load_model(tmp_path / "dynamics" / "checkpoint_step_2.pt"), torch.nn.Module)


def _weights(path):
    return load_checkpoint(path)["model"]


def test_kmeans_tokenizer_trainer_fits_its_codes_once_and_the_world_runs_on_them(tmp_path, coinrun_dir, monkeypatch):
    import gymnasium as gym
    cfg = yaml.safe_load(micro_config(tmp_path, "tokenizer", steps=8).read_text())
    cfg["model"].update(quantizer="kmeans", kmeans_frames=40)
    path = tmp_path / "kmeans.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cfg_obj = load_config(path)
    p = train_tokenizer.base_parser("tokenizer")
    few = tmp_path / "few.yaml"  # 3 frames of 16 patches cannot seed 64 codes
    few.write_text(yaml.safe_dump({**cfg, "model": {**cfg["model"], "kmeans_frames": 3}}))
    with pytest.raises(TrainingError, match="3 training frames give 48: raise model.kmeans_frames"):
        train_tokenizer.main(args_for(p, few, coinrun_dir, tmp_path / "few"))
    first = train_tokenizer.main(args_for(p, path, coinrun_dir, tmp_path / "k", "--max_steps", "4"))
    # The codes are k-means of the 40 frames the trainer spreads over its training split.
    fresh = train_tokenizer.make_task(cfg_obj).model
    train_ds, _ = build_datasets(cfg_obj, coinrun_dir, cfg_obj.model.image_size)
    train_tokenizer.fit_pixel_codes(fresh, train_ds, 40, seed=cfg_obj.train.seed)
    codes = _weights(first)["vq.centroids"]
    assert torch.equal(codes, fresh.vq.centroids)
    # Resumed, the run keeps them (it does not refit); only the decoder trained.
    last = train_tokenizer.main(args_for(p, path, coinrun_dir, tmp_path / "k"))
    after = _weights(last)
    assert load_checkpoint(last)["step"] == 8 and torch.equal(after["vq.centroids"], codes)
    assert not torch.equal(after["dec_out.weight"], _weights(first)["dec_out.weight"])
    # Started from those weights (--init_from), a new run keeps the codes without a refit, so
    # tokens stay those a dynamics model already learned.
    def no_refit(*a, **k):
        raise AssertionError("a run started from trained weights refitted its codes")
    monkeypatch.setattr(train_tokenizer, "fit_pixel_codes", no_refit)
    tuned = train_tokenizer.main(args_for(p, path, coinrun_dir, tmp_path / "tuned", "--max_steps", "2",
                                          "--init_from", str(last)))
    assert torch.equal(_weights(tuned)["vq.centroids"], codes)
    # Dynamics trains on its tokens (code patches included), and the env steps the pair.
    dyn_cfg = yaml.safe_load(micro_config(tmp_path, "dynamics", steps=2).read_text())
    dyn_cfg["model"].update(token_pixels=192)
    dyn_path = tmp_path / "dyn.yaml"
    dyn_path.write_text(yaml.safe_dump(dyn_cfg))
    lam = train_lam.main(args_for(train_lam.base_parser("lam"), micro_config(tmp_path, "lam", steps=2),
                                  coinrun_dir, tmp_path / "k"))
    dyn = train_dynamics.main(args_for(train_dynamics.parser(), dyn_path, coinrun_dir, tmp_path / "k",
                                       "--tokenizer_path", str(last), "--lam_path", str(lam)))
    prompt = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    env = gym.make("Genie-v0", tokenizer_path=last, dynamics_path=dyn, prompt=prompt, device="cpu")
    obs, _ = env.reset(seed=0)
    obs2, *_ = env.step(3)
    assert obs.shape == obs2.shape == (32, 32, 3) and obs2.dtype == np.uint8
    env.close()
    # eval reports how much the decoder adds to the codes' own patches.
    from genie_env.cli import main
    assert main(["eval", "--data_dir", str(coinrun_dir), "--clips", "2", "--out", str(tmp_path / "eval"),
                 "--device", "cpu", "--horizon", "0", "--long_steps", "0", "--action_clips", "2",
                 "--tokenizer_path", str(last), "--lam_path", str(lam), "--dynamics_path", str(dyn)]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert 5 < results["tokenizer PSNR, its pixel codes alone (dB)"] < 60


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, coinrun_dir):
    cfg_path = micro_config(tmp_path, "tokenizer", steps=8)
    straight = train_tokenizer.main(args_for(train_tokenizer.base_parser("tokenizer"), cfg_path, coinrun_dir,
                                             tmp_path / "a"))

    task = train_tokenizer.make_task(load_config(cfg_path))
    calls = {"n": 0}
    inner = task.loss

    def interrupted(m, batch):
        calls["n"] += 1
        if calls["n"] == 6:  # after the step-4 checkpoint, mid-way to the next
            raise KeyboardInterrupt
        return inner(m, batch)

    task.loss = interrupted
    with pytest.raises(KeyboardInterrupt):
        train(task, coinrun_dir, "cpu", tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "tokenizer" / "latest.pt")["step"] == 4
    resumed = train_tokenizer.main(args_for(train_tokenizer.base_parser("tokenizer"), cfg_path, coinrun_dir,
                                            tmp_path / "b"))
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]


def test_data_order_depends_on_the_step_alone():
    full = list(StepBatchSampler(10, 4, 0, 1, seed=3, start_step=0, max_steps=7))
    tail = list(StepBatchSampler(10, 4, 0, 1, seed=3, start_step=4, max_steps=7))
    assert tail == full[4:]
    assert sorted(sum(full[:5], [])[:10]) == list(range(10))  # an epoch sees every clip once
    ranks = [list(StepBatchSampler(10, 4, r, 2, seed=3, start_step=0, max_steps=7)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == full


@pytest.mark.parametrize("time_limit", [None, "0.001"])
def test_two_process_gloo_ddp_run(tmp_path, coinrun_dir, time_limit):
    cfg_path = micro_config(tmp_path, "lam", steps=4 if time_limit is None else 400)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29531" if time_limit is None else "29532",
           "-m", "trainers.train_lam", "--config", str(cfg_path), "--data_dir", str(coinrun_dir),
           "--device", "cpu", "--out_dir", str(tmp_path / "ddp")]
    if time_limit is not None:  # the ranks agree on the stop through an all-reduce; stopping apart would hang
        cmd += ["--time_limit", time_limit]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "lam" / "latest.pt")
    steps = 4 if time_limit is None else ckpt["config"]["train"]["max_steps"]
    assert ckpt["step"] == steps < 400 and ckpt["extra"]["world_size"] == 2 and len(ckpt["extra"]["rank_rng"]) == 2
    assert isinstance(load_model(tmp_path / "ddp" / "lam" / "latest.pt"), torch.nn.Module)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, coinrun_dir):
    task = train_tokenizer.make_task(load_config(micro_config(tmp_path, "tokenizer", steps=8)))
    inner, calls = task.loss, {"n": 0}

    def poisoned(m, batch):
        calls["n"] += 1
        out = inner(m, batch)
        if calls["n"] == 6:
            out["loss"] = out["loss"] * float("nan")
        return out

    task.loss = poisoned
    with pytest.raises(TrainingError, match="loss became nan at step 6.*checkpoint_step|latest"):
        train(task, coinrun_dir, "cpu", tmp_path / "o")
    assert load_checkpoint(tmp_path / "o" / "tokenizer" / "latest.pt")["step"] == 4


def test_bad_inputs_fail_before_any_compute(tmp_path, trained, coinrun_dir):
    p = train_tokenizer.base_parser("tokenizer")
    cfg = micro_config(tmp_path, "tokenizer")
    with pytest.raises(Exception, match="no .h5|not found|does not exist"):
        train_tokenizer.main(args_for(p, cfg, tmp_path / "nodata", tmp_path / "o"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TrainingError, match="cannot write checkpoints"):
        train_tokenizer.main(args_for(p, cfg, coinrun_dir, blocker / "sub"))
    with pytest.raises(TrainingError, match="configures a lam, but this is the tokenizer trainer"):
        train_tokenizer.main(args_for(p, micro_config(tmp_path, "lam"), coinrun_dir, tmp_path / "o"))
    # A dynamics config whose vocabulary and actions do not match the trained tokenizer and LAM.
    bad = yaml.safe_load((trained["tmp"] / "dynamics.yaml").read_text())
    bad["model"].update(vocab_size=128, num_actions=8)
    bad_path = tmp_path / "bad_dyn.yaml"
    bad_path.write_text(yaml.safe_dump(bad))
    with pytest.raises(TrainingError, match=r"64 codes but the dynamics vocab_size is 128.*4 actions but dynamics num_actions is 8"):
        train_dynamics.main(args_for(train_dynamics.parser(), bad_path, coinrun_dir, tmp_path / "o",
                                     "--tokenizer_path", str(trained["tokenizer"]), "--lam_path", str(trained["lam"])))
    # Checkpoints swapped between the two arguments.
    with pytest.raises(Exception, match="holds a lam model, but a tokenizer checkpoint"):
        train_dynamics.main(args_for(train_dynamics.parser(), trained["tmp"] / "dynamics.yaml", coinrun_dir,
                                     tmp_path / "o", "--tokenizer_path", str(trained["lam"]),
                                     "--lam_path", str(trained["tokenizer"])))


def test_a_pairwise_lam_labels_longer_dynamics_clips(tmp_path, trained, coinrun_dir):
    # A LAM that sees two frames (max_frames 2, trained on pairs) labels the dynamics model's
    # 4-frame clips pair by pair; a longer clip is no reason to refuse it.
    cfg = yaml.safe_load(micro_config(tmp_path, "lam", steps=4).read_text())
    cfg["model"]["max_frames"], cfg["data"]["clip_len"] = 2, 2
    (tmp_path / "pair_lam.yaml").write_text(yaml.safe_dump(cfg))
    lam = train_lam.main(args_for(train_lam.base_parser("lam"), tmp_path / "pair_lam.yaml", coinrun_dir, tmp_path / "p"))
    dyn = train_dynamics.main(args_for(train_dynamics.parser(), micro_config(tmp_path, "dynamics", steps=4), coinrun_dir,
                                       tmp_path / "p", "--tokenizer_path", str(trained["tokenizer"]), "--lam_path", str(lam)))
    assert load_checkpoint(dyn)["step"] == 4
    video = _val_batch(coinrun_dir)
    pairs = load_model(lam, "lam")
    assert pairs.infer_actions(video).shape == (video.shape[0], 3)


def test_a_lam_with_min_history_trains_on_its_scored_transitions_and_labels_dynamics_clips(tmp_path, trained,
                                                                                           coinrun_dir):
    cfg = yaml.safe_load(micro_config(tmp_path, "lam", steps=4).read_text())
    cfg["model"].update(max_frames=3, min_history=1, motion_weight=0.1, motion_axes="horizontal")
    cfg["data"]["clip_len"] = 2
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(TrainingError, match="data.clip_len 2 leaves no transition.*at least 3"):
        train_lam.main(args_for(train_lam.base_parser("lam"), tmp_path / "short.yaml", coinrun_dir, tmp_path / "s"))
    cfg["data"]["clip_len"] = 3
    (tmp_path / "hist.yaml").write_text(yaml.safe_dump(cfg))
    lam = train_lam.main(args_for(train_lam.base_parser("lam"), tmp_path / "hist.yaml", coinrun_dir, tmp_path / "h"))
    model = load_model(lam, "lam")
    assert model.cfg.min_history == 1 and model.cfg.motion_axes == "horizontal"
    # The dynamics model's 4-frame clips are labelled in windows that keep each transition's past.
    dyn = train_dynamics.main(args_for(train_dynamics.parser(), micro_config(tmp_path, "dynamics", steps=2), coinrun_dir,
                                       tmp_path / "h", "--tokenizer_path", str(trained["tokenizer"]), "--lam_path", str(lam)))
    assert load_checkpoint(dyn)["step"] == 2
    video = _val_batch(coinrun_dir)
    assert torch.equal(model.infer_actions(video)[:, 2:], model.infer_actions(video[:, 1:])[:, 1:])


def test_cli_reports_errors_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "trainers.train_tokenizer", "--config",
                          str(ROOT / "configs/tiny/tokenizer_config.yaml"), "--data_dir", str(tmp_path / "none"),
                          "--device", "cpu", "--out_dir", str(tmp_path / "o")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "error:" in res.stderr and "Traceback" not in res.stderr


def test_cotraining_keeps_both_models(tmp_path, trained, coinrun_dir):
    cfg = micro_config(tmp_path, "dynamics", steps=4)
    path = train_dynamics.main(args_for(train_dynamics.parser(), cfg, coinrun_dir, tmp_path / "co",
                                        "--tokenizer_path", str(trained["tokenizer"]),
                                        "--lam_path", str(trained["lam"]), "--cotrain_lam"))
    ckpt = load_checkpoint(path)
    assert "cotrain_lam" in ckpt["extra"]
    lam = load_model(tmp_path / "co" / "lam_cotrained" / "latest.pt", "lam")
    start = load_checkpoint(trained["lam"])["model"]
    changed = [k for k, v in lam.state_dict().items() if not torch.equal(v, start[k])]
    assert changed, "co-training did not update the LAM"


def test_export_packages_a_playable_world(trained, coinrun_dir, key_probes, tmp_path):
    import json

    import gymnasium as gym
    from PIL import Image

    from genie_env.data.probes import load_key_probes
    from genie_env.video import resize_frames

    from genie_env.cli import main as cli
    out = tmp_path / "assets"
    assert cli(["export", "--run", str(trained["out"]), "--data_dir", str(coinrun_dir), "--out", str(out),
                "--num_prompts", "3"]) == 0
    for kind in ("tokenizer", "lam", "dynamics"):
        ckpt = load_checkpoint(out / f"{kind}.pt")
        assert "optimizer" not in ckpt and "rng" not in ckpt
        assert ckpt["step"] == load_checkpoint(trained["out"] / kind / "latest.pt")["step"] > 0  # how long it trained
    held_out = ClipDataset(coinrun_dir, clip_len=4, split="val").num_episodes
    assert len(list((out / "prompts").glob("*.png"))) == held_out >= 1  # one per held-out episode
    amap = json.loads((out / "action_map.json").read_text())
    chosen = [amap[k] for k in ("left", "right", "up", "down")]
    assert len(set(chosen)) == 4 and all(0 <= c < 4 for c in chosen)  # one-to-one over the 4 actions
    assert amap["transitions"] > 0 and len(amap["lift"]["left"]) == 4
    env = gym.make("Genie-v0", tokenizer_path=out / "tokenizer.pt", dynamics_path=out / "dynamics.pt",
                   prompt=out / "prompts", device="cpu")
    obs, _ = env.reset(seed=0)
    assert env.step(1)[0].shape == obs.shape == (32, 32, 3)

    # Prompts from key probes instead: the real states in which both arrow keys moved the scene.
    assert cli(["export", "--run", str(trained["out"]), "--data_dir", str(coinrun_dir), "--out", str(out),
                "--key_probes", str(key_probes)]) == 0
    probes = load_key_probes(key_probes)
    both = (probes["scroll"][:, 0] > 0) & (probes["scroll"][:, 1] < 0)
    assert 0 < both.sum() < 4  # the fixture's probes hold both kinds
    pngs = sorted((out / "prompts").glob("*.png"))
    assert len(pngs) == both.sum()
    expected = resize_frames(torch.from_numpy(probes["prompts"][both]).permute(0, 3, 1, 2).float() / 255, (32, 32))
    got = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255 for p in pngs])
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6

    # --prune_codes: both checkpoints keep the 16 codes the training frames use most, say so, and play.
    assert cli(["export", "--run", str(trained["out"]), "--data_dir", str(coinrun_dir), "--out", str(out),
                "--prune_codes", "16", "--sampled_passes", "1", "--temperature", "0.5"]) == 0
    tok, dyn = load_model(out / "tokenizer.pt", "tokenizer"), load_model(out / "dynamics.pt", "dynamics")
    assert tok.cfg.num_codes == dyn.cfg.vocab_size == 16
    assert (dyn.cfg.sampled_passes, dyn.cfg.temperature) == (1, 0.5)  # the sampler flags, written in
    assert dyn.cfg.maskgit_steps == load_model(trained["dynamics"], "dynamics").cfg.maskgit_steps  # the rest kept
    for kind in ("tokenizer", "dynamics"):
        assert load_checkpoint(out / f"{kind}.pt")["extra"]["pruned"]["codes kept"] == 16
    full = load_model(trained["tokenizer"], "tokenizer")
    assert {tuple(v) for v in tok.vq.codes().tolist()} <= {tuple(v) for v in full.vq.codes().tolist()}
    env = gym.make("Genie-v0", tokenizer_path=out / "tokenizer.pt", dynamics_path=out / "dynamics.pt",
                   prompt=out / "prompts", device="cpu")
    env.reset(seed=0)
    assert env.step(1)[0].shape == (32, 32, 3)
    before = (out / "tokenizer.pt").read_bytes()
    assert cli(["export", "--run", str(trained["out"]), "--data_dir", str(coinrun_dir), "--out", str(out),
                "--prune_codes", "65"]) == 2  # more than the 64 codes: refused by name, before any write
    assert cli(["export", "--run", str(trained["out"]), "--data_dir", str(coinrun_dir), "--out", str(out),
                "--sampled_passes", "0"]) == 2
    assert (out / "tokenizer.pt").read_bytes() == before


def test_tensorboard_gets_throughput_and_peak_memory(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    for kind in ("tokenizer", "dynamics"):
        events = EventAccumulator(str(trained["out"] / kind / "tb"))
        events.Reload()
        tags = events.Tags()["scalars"]
        assert {"train/frames_per_s", "train/peak_memory_GiB", "train/loss"} <= set(tags)
        peak = [e.value for e in events.Scalars("train/peak_memory_GiB")]
        assert 0.05 < peak[-1] < 24 and peak == sorted(peak)  # a running peak never falls
        assert all(e.value > 0 for e in events.Scalars("train/frames_per_s"))


def test_code_pixel_means_average_the_patches_each_code_gets(trained, coinrun_dir):
    tok = load_model(trained["tokenizer"], "tokenizer").eval()
    clips = list(_val_batch(coinrun_dir))
    means = train_dynamics.code_pixel_means(tok, clips, batch=3)
    assert means.shape == (64, 8 * 8 * 3)
    video = torch.stack(clips)
    codes = tok.encode(video).flatten()
    patches = video.reshape(len(clips), 4, 3, 4, 8, 4, 8).permute(0, 1, 3, 5, 4, 6, 2).reshape(codes.numel(), -1)
    used = codes.unique()
    for c in used[:5]:
        assert torch.allclose(means[c], patches[codes == c].mean(0), atol=1e-5)
    unused = [c for c in range(64) if c not in set(used.tolist())]
    if unused:  # codes no patch took get the mean of all patches
        assert torch.allclose(means[unused[0]], patches.mean(0), atol=1e-5)


def test_token_pixels_dynamics_checkpoint_carries_its_code_patches(tmp_path, trained, coinrun_dir):
    cfg = yaml.safe_load(micro_config(tmp_path, "dynamics", steps=4).read_text())
    cfg["model"]["token_pixels"] = 12
    path = tmp_path / "pix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    extra = ("--tokenizer_path", str(trained["tokenizer"]), "--lam_path", str(trained["lam"]))
    with pytest.raises(TrainingError, match=r"token_pixels is 12 but the tokenizer's patches hold 192 values"):
        train_dynamics.main(args_for(train_dynamics.parser(), path, coinrun_dir, tmp_path / "p", *extra))
    cfg["model"]["token_pixels"] = 192
    path.write_text(yaml.safe_dump(cfg))
    dyn_path = train_dynamics.main(args_for(train_dynamics.parser(), path, coinrun_dir, tmp_path / "p", *extra))
    # Rebuilt from the file alone, the model holds the patches the trainer measured on its clips.
    dyn = load_model(dyn_path, "dynamics")
    tok = load_model(trained["tokenizer"], "tokenizer").eval()
    train_ds, _ = build_datasets(load_config(path), coinrun_dir, tok.cfg.image_size)
    fresh = train_dynamics.DynamicsModel(dyn.cfg)
    fresh.set_code_pixels(train_dynamics.code_pixel_means(tok, spread_clips(train_ds, 256)))
    assert torch.allclose(dyn.code_pixels, fresh.code_pixels, atol=1e-5)
    assert dyn.code_pixels[:-1].abs().sum() > 0


def test_time_budget_fits_the_schedule_to_the_clock():
    from trainers.loop import TimeBudget
    now = [0.0]
    budget = TimeBudget(10, max_steps=100_000, clock=lambda: now[0])  # 600 s
    horizons = []
    for step in range(1, 601):
        now[0] = 5.0 + (step - 1) * 0.5 if step < 300 else 154.5 + (step - 300) * 1.0  # 2 steps/s, then 1
        horizons.append(budget.after_step(step))
    assert horizons[0] == 100_000  # nothing measured before the first checkpoint of the budget
    # At 10% (60 s, step 111) the rate is 2 steps/s: 540 s left fit about 1026 more steps.
    h10 = horizons[110]
    assert h10 == 111 + int(2 * (600 - 60) * TimeBudget.MARGIN)
    # At 40% (240 s) it has slowed: the horizon moves down, and stays ahead of the step.
    assert horizons[-1] < h10 and all(h > s for s, h in enumerate(horizons, start=1))
    assert not budget.expired()
    now[0] = 600.0
    assert budget.expired()
    capped = TimeBudget(10, max_steps=50, clock=lambda: now[0])
    for step in range(1, 200):
        now[0] += 0.01
        assert capped.after_step(step) <= 50  # never past the configured max_steps
    with pytest.raises(TrainingError, match="time_limit_min"):
        TimeBudget(0, 10)


def test_a_time_limited_run_stops_saves_and_records_its_steps(tmp_path, coinrun_dir):
    cfg_path = micro_config(tmp_path, "lam", steps=400)
    path = train_lam.main(args_for(train_lam.base_parser("lam"), cfg_path, coinrun_dir, tmp_path / "t",
                                   "--time_limit", "0.001"))  # 0.06 s: spent within the first steps
    ckpt = load_checkpoint(path)
    assert path.name == f"checkpoint_step_{ckpt['step']}.pt" and ckpt["step"] < 400
    assert ckpt["config"]["train"]["max_steps"] == ckpt["step"]  # what the run got, not what was asked
    assert ckpt["config"]["train"]["time_limit_min"] == 0.001
    assert load_checkpoint(tmp_path / "t" / "lam" / "latest.pt")["step"] == ckpt["step"]


def test_the_dynamics_stage_moves_its_frozen_tokenizer_and_lam_to_the_device(trained, tmp_path, coinrun_dir):
    # On a GPU the loss meets CUDA frames: the tokenizer and LAM that label them must be there too.
    tok, lam = load_model(trained["tokenizer"], "tokenizer"), load_model(trained["lam"], "lam")
    task = train_dynamics.make_task(load_config(micro_config(tmp_path, "dynamics", steps=1)), tok, lam)
    assert len(task.frozen) == 2 and task.frozen[0] is tok and task.frozen[1] is lam
    moved = []
    for m in task.frozen:
        m.to = (lambda orig: lambda *a, **k: (moved.append(torch.device(a[0])), orig(*a, **k))[1])(m.to)
    train(task, coinrun_dir, "cpu", tmp_path / "o", image_size=tok.cfg.image_size)
    assert moved == [torch.device("cpu")] * 2
    assert not any(p.requires_grad for p in [*tok.parameters(), *lam.parameters()])


def test_init_from_starts_a_new_run_from_trained_weights_and_refuses_a_misfit(tmp_path, trained, coinrun_dir):
    from genie_env.checkpoint import CheckpointError
    parser = train_lam.base_parser("lam")
    source = _weights(trained["lam"])
    # lr 0: the one step leaves the weights where the run started.
    cfg_path = micro_config(tmp_path, "lam", steps=1, lr=0.0)
    fresh = _weights(train_lam.main(args_for(parser, cfg_path, coinrun_dir, tmp_path / "fresh")))
    assert any(not torch.equal(fresh[k], source[k]) for k in source)
    path = train_lam.main(args_for(parser, cfg_path, coinrun_dir, tmp_path / "ft", "--init_from", str(trained["lam"])))
    ckpt = load_checkpoint(path)
    # Every weight and the codebook as trained; only the dead-code counter ticked on.
    assert all(torch.equal(ckpt["model"][k], source[k]) for k in source if not k.endswith("steps_unused"))
    assert ckpt["step"] == 1 and ckpt["config"]["train"]["init_from"] == str(trained["lam"])

    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["model"]["enc_dim"] = 32
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(TrainingError, match="init_from .* do not fit the lam this config builds"):
        train_lam.main(args_for(parser, tmp_path / "wide.yaml", coinrun_dir, tmp_path / "w",
                                "--init_from", str(trained["lam"])))
    with pytest.raises(CheckpointError, match="holds a tokenizer model, but a lam checkpoint"):
        train_lam.main(args_for(parser, cfg_path, coinrun_dir, tmp_path / "k", "--init_from", str(trained["tokenizer"])))


def test_rollout_prob_trains_a_share_of_steps_on_the_models_own_past(tmp_path, trained, coinrun_dir):
    tok, lam = load_model(trained["tokenizer"], "tokenizer"), load_model(trained["lam"], "lam")
    cfg = yaml.safe_load(micro_config(tmp_path, "dynamics", steps=4).read_text())
    cfg["model"].update(rollout_prob=1.0)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    task = train_dynamics.make_task(load_config(tmp_path / "r.yaml"), tok, lam, code_pixels=None)
    frames = _val_batch(coinrun_dir)
    torch.manual_seed(3)
    out = task.loss(task.model, {"frames": frames})
    # The same step by hand: the draw that chose it, the model's rollout, then the clip without
    # its first frame, its visible past the rollout and its targets the recorded later frames.
    torch.manual_seed(3)
    torch.rand(())
    tokens, actions = tok.encode(frames), lam.infer_actions(frames)
    past = task.model.own_past(tokens, actions)
    assert task.model.training
    ref = task.model(tokens[:, 1:], actions[:, 1:], past=past)
    assert out["mask"].shape[1] == 3 and torch.equal(out["mask"], ref["mask"])
    assert not out["mask"][:, :past.shape[1]].any() and torch.allclose(out["loss"], ref["loss"])

    cfg["model"].update(rollout_prob=0.5)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    half = train_dynamics.make_task(load_config(tmp_path / "r.yaml"), tok, lam)
    lengths = []
    for seed in range(12):
        torch.manual_seed(seed)
        lengths.append(half.loss(half.model, {"frames": frames})["mask"].shape[1])
    assert set(lengths) == {3, 4}  # steps on the recorded clip and steps on the model's own past
    path = train_dynamics.main(args_for(train_dynamics.parser(), tmp_path / "r.yaml", coinrun_dir, tmp_path / "run",
                                        "--tokenizer_path", str(trained["tokenizer"]),
                                        "--lam_path", str(trained["lam"])))
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 4 and ckpt["config"]["model"]["rollout_prob"] == 0.5
    with pytest.raises(TrainingError, match="rollout_prob .* cannot be used with --cotrain_lam"):
        train_dynamics.make_task(load_config(tmp_path / "r.yaml"), tok, lam, cotrain=True)


def test_hflip_mirrors_clips_and_swaps_the_mirrored_actions_in_the_dynamics_loss(tmp_path, trained, coinrun_dir):
    tok, lam = load_model(trained["tokenizer"], "tokenizer"), load_model(trained["lam"], "lam")
    cfg = yaml.safe_load(micro_config(tmp_path, "dynamics", steps=1).read_text())
    cfg["model"].update(hflip_prob=1.0, mirror_actions=[0, 3], mask_rate_min=0.9)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    mirrored = train_dynamics.make_task(load_config(tmp_path / "m.yaml"), tok, lam)
    frames = _val_batch(coinrun_dir)
    actions = lam.infer_actions(frames)
    swapped = torch.tensor([3, 1, 2, 0])[actions]  # 0 <-> 3, the other actions kept
    assert not torch.equal(frames, frames.flip(-1)) and not torch.equal(actions, swapped)
    torch.manual_seed(5)
    out = mirrored.loss(mirrored.model, {"frames": frames})
    torch.manual_seed(5)
    torch.rand(frames.shape[0])  # the draw that picked the clips to mirror (all of them at prob 1)
    ref = mirrored.model(tok.encode(frames.flip(-1)), swapped)
    assert torch.equal(out["mask"], ref["mask"]) and torch.allclose(out["loss"], ref["loss"])

    # A share of clips: some mirrored, some as recorded, the labels following the frames.
    torch.manual_seed(0)
    many = frames.repeat(8, 1, 1, 1, 1)
    got, got_actions = train_dynamics.mirror_clips(many, actions.repeat(8, 1), 0.5, (0, 3))
    flipped = torch.tensor([torch.equal(g, f.flip(-1)) for g, f in zip(got, many)])
    assert 0 < flipped.sum() < len(many)
    assert torch.equal(got_actions[flipped], swapped.repeat(8, 1)[flipped])
    assert torch.equal(got[~flipped], many[~flipped]) and torch.equal(got_actions[~flipped], actions.repeat(8, 1)[~flipped])

    with pytest.raises(TrainingError, match="cannot be used with --cotrain_lam"):
        train_dynamics.make_task(load_config(tmp_path / "m.yaml"), tok, lam, cotrain=True)
    for bad, msg in (({"hflip_prob": 1.5}, "hflip_prob must be in"), ({"mirror_actions": [2, 2]}, "two different"),
                     ({"mirror_actions": [0, 4]}, "two different")):
        cfg["model"].update({"hflip_prob": 0.5, "mirror_actions": [0, 3], **bad})
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
        with pytest.raises(ValueError, match=msg):
            load_config(tmp_path / "bad.yaml")
