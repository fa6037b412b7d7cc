import math

import numpy as np
import pytest
import torch

from genie_env.evaluate import action_agreement, ssim
from genie_env.metrics import psnr, psnr_per_frame


def test_psnr_of_known_errors():
    target = torch.zeros(2, 3, 8, 8)
    assert psnr(target + 0.1, target).item() == pytest.approx(20.0)
    video = torch.zeros(1, 2, 3, 8, 8)
    pred = video.clone()
    pred[:, 1] += 0.01
    per = psnr_per_frame(pred, video)
    assert per[1].item() == pytest.approx(40.0) and per[0] > 90  # a perfect frame is capped, not inf


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 32, 32)
    assert ssim(img, img).item() == pytest.approx(1.0)
    noisy = [ssim((img + s * torch.randn_like(img)).clamp(0, 1), img).item() for s in (0.05, 0.2, 0.5)]
    assert 1 > noisy[0] > noisy[1] > noisy[2]


def test_action_agreement():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, 4000)
    perfect = (true * 3 + 1) % 8  # a relabelling: every latent names one true action
    a = action_agreement(perfect, true)
    assert a["accuracy"] == 1.0 and abs(a["mutual information (bits)"] - 2.0) < 0.01
    independent = action_agreement(rng.integers(0, 8, 4000), true)
    assert independent["mutual information (bits)"] < 0.02
    # Few pairs: the plug-in estimate of independent actions is well above 0, the corrected one near it.
    few = action_agreement(rng.integers(0, 8, 448), rng.integers(0, 15, 448))
    assert few["mutual information (bits)"] > 0.12
    assert abs(few["mutual information, bias-corrected (bits)"]) < 0.1
    assert abs(a["mutual information, bias-corrected (bits)"] - 2.0) < 0.01
    assert abs(independent["accuracy"] - independent["chance accuracy"]) < 0.05
    assert math.isclose(a["chance accuracy"], np.bincount(true).max() / len(true))


def test_latent_actions_already_inferred_are_reused_not_recomputed(coinrun_dir):
    """eval hands the LAM actions of its rolled-out clips to the statistics: the result must be
    what inferring every clip gives, and the LAM must not see those clips twice."""
    from genie_env.data.h5 import ClipDataset
    from genie_env.evaluate import latent_and_true_actions
    from genie_env.models import LatentActionModel
    from tests.tiny import lam_cfg
    torch.manual_seed(0)
    lam = LatentActionModel(lam_cfg(image_size=(64, 64), max_frames=4)).eval()
    ds = ClipDataset(coinrun_dir, clip_len=6)
    idx = list(range(min(10, len(ds))))
    full, true = latent_and_true_actions(lam, ds, idx, batch=1, dev="cpu")
    known = [lam.infer_actions(torch.stack([ds[i]["frames"] for i in idx[:3]]))]
    seen = []
    infer = lam.infer_actions
    lam.infer_actions = lambda v: seen.append(v.shape[0]) or infer(v)
    again, true_again = latent_and_true_actions(lam, ds, idx, batch=1, dev="cpu", known=known)
    assert np.array_equal(full, again) and np.array_equal(true, true_again)
    assert full.shape == (len(idx) * 5,) and true.shape == full.shape
    assert sum(seen) == len(idx) - 3


def test_action_chain_counts_codes_and_their_runs_within_clips(coinrun_dir, monkeypatch):
    """The chain eval's data-drift draws from: code frequencies, and next-code probabilities read
    from consecutive transitions of one clip, never across two clips."""
    from genie_env.data.h5 import ClipDataset
    from genie_env.evaluate import action_chain
    from genie_env.models import LatentActionModel
    from tests.tiny import lam_cfg
    lam = LatentActionModel(lam_cfg(image_size=(64, 64), max_frames=2, num_actions=8)).eval()
    # Every clip's codes alternate 0, 3, 0, ... from 0: a clip of 16 frames ends on code 0, so
    # a pair read across clips would be 0 -> 0.
    monkeypatch.setattr(lam, "infer_actions", lambda video: torch.arange(video.shape[1] - 1).remainder(2).mul(3)
                        .expand(video.shape[0], -1))
    ds = ClipDataset(coinrun_dir, clip_len=16)
    freq, chain = action_chain(lam, ds, clips=12)
    clips = min(12, len(ds))
    assert freq.sum().item() == pytest.approx(1) and freq[0].item() == pytest.approx(8 / 15)
    assert freq[3].item() == pytest.approx(7 / 15) and freq[[1, 2, 4, 5, 6, 7]].sum() == 0
    assert torch.allclose(chain.sum(dim=1), torch.ones(8))
    assert chain[0, 3].item() == pytest.approx((7 * clips + 1) / (7 * clips + 8))  # 0 -> 3, add-one smoothed
    assert chain[3, 0].item() == pytest.approx((7 * clips + 1) / (7 * clips + 8))
    assert chain[0, 0] == chain[0, 1]  # no 0 -> 0 pair: none read across clips
    assert torch.allclose(chain[5], torch.full((8,), 1 / 8))  # a code never seen: any next code


def test_drift_under_a_chain_steps_the_chains_codes(world):
    """With a chain that always names code 2, the drift episode is the world held on code 2;
    its figures carry the data-drift label, uniform actions keep eval's."""
    from genie_env.checkpoint import load_model
    from genie_env.evaluate import drift
    from genie_env.world import World
    tok, dyn = load_model(world["tok"], "tokenizer"), load_model(world["dyn"], "dynamics")
    prompts = torch.from_numpy(world["prompts"][:3]).permute(0, 3, 1, 2).float() / 255
    reference = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    onehot = torch.zeros(dyn.cfg.num_actions)
    onehot[2] = 1
    frames_at: dict = {}
    out = drift(World(tok, dyn, 3), prompts, reference, reference, 10, seed=5, frames_at=frames_at,
                chain=(onehot, onehot.expand(dyn.cfg.num_actions, -1)))
    held = World(tok, dyn, 3)
    held.reset(prompts)
    gens = [torch.Generator().manual_seed(5 + i) for i in range(3)]
    for t in range(10):
        frames = held.step(torch.full((3,), 2), generators=gens).frames
    assert torch.equal(frames, frames_at[10])
    assert set(out) == {"drift: real held-out frames' colour distance",
                        "drift under the data's latent actions: colour distance at step 1",
                        "drift under the data's latent actions: colour distance at step 10"}
    uniform = drift(World(tok, dyn, 3), prompts, reference, reference, 10, seed=5)
    assert "drift: colour distance at step 10" in uniform
