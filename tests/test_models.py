import math

import pytest
import torch
import torch.nn.functional as F

from genie_env.config import ConfigError
from genie_env.metrics import psnr
from genie_env.models import DynamicsModel, LatentActionModel, VideoTokenizer
from genie_env.models.tokenizer import patchify, unpatchify
from tests.tiny import dynamics_cfg, lam_cfg, moving_square, tokenizer_cfg


def _train(model, batch_fn, steps, lr=3e-3, until=None, every=50):
    """Train for ``steps`` steps, or, with ``until(model) -> bool``, until it holds (checked every
    ``every`` steps) with ``steps`` as a generous cap: how fast a toy converges depends on the
    CPU's float order, so tests demand the result, not the step count it took here."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for i in range(steps):
        out = model(*batch_fn(i))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        if until is not None and (i + 1) % every == 0:
            model.eval()
            done = until(model)
            model.train()
            if done:
                break
    model.eval()
    return losses


# ---- tokenizer ------------------------------------------------------------------------------

def test_tokenizer_shapes_and_range():
    torch.manual_seed(0)
    tok = VideoTokenizer(tokenizer_cfg()).eval()
    video, _ = moving_square(2, 4)
    out = tok(video)
    assert out["recon"].shape == video.shape and math.isfinite(out["loss"].item())
    tokens = tok.encode(video)
    assert tokens.shape == (2, 4, 16) and tokens.dtype == torch.int64
    assert 0 <= tokens.min() and tokens.max() < 32
    frames = tok.decode(tokens)
    assert frames.shape == video.shape and 0 <= frames.min() and frames.max() <= 1


def test_tokenizer_rejects_wrong_shape():
    tok = VideoTokenizer(tokenizer_cfg())
    with pytest.raises(ValueError, match=r"\(B, T, 3, 16, 16\)"):
        tok.encode(torch.rand(1, 2, 3, 32, 32))


def test_tokenizer_is_causal_in_time():
    torch.manual_seed(0)
    tok = VideoTokenizer(tokenizer_cfg()).eval()
    video, _ = moving_square(1, 5)
    tokens = tok.encode(video)
    pixels = tok.decode(tokens)
    video2 = video.clone()
    video2[:, 3:] = torch.rand_like(video2[:, 3:])
    assert torch.equal(tok.encode(video2)[:, :3], tokens[:, :3])
    tokens2 = tokens.clone()
    tokens2[:, 3:] = torch.randint(0, 32, tokens2[:, 3:].shape)
    assert torch.equal(tok.decode(tokens2)[:, :3], pixels[:, :3])


def test_tokenizer_frame_by_frame_equals_whole_clip():
    torch.manual_seed(0)
    tok = VideoTokenizer(tokenizer_cfg()).eval()
    video, _ = moving_square(2, 5)
    enc_cache, dec_cache = tok.new_caches(2)
    tokens = torch.stack([tok.encode_step(video[:, t], enc_cache) for t in range(5)], dim=1)
    assert torch.equal(tokens, tok.encode(video))
    frames = torch.stack([tok.decode_step(tokens[:, t], dec_cache) for t in range(5)], dim=1)
    torch.testing.assert_close(frames, tok.decode(tokens), atol=1e-5, rtol=1e-5)


def test_bfloat16_tokenizer_takes_float32_pixels_and_returns_float32():
    torch.manual_seed(0)
    tok = VideoTokenizer(tokenizer_cfg()).eval()
    video, _ = moving_square(2, 3)
    low = VideoTokenizer(tokenizer_cfg()).eval()
    low.load_state_dict(tok.state_dict())
    low = low.to(torch.bfloat16)
    tokens = low.encode(video)  # float32 pixels into a bfloat16 model
    assert torch.equal(tokens, low.encode(video.bfloat16()))
    frames = low.decode(tokens)
    assert frames.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: close to float32, not equal.
    assert (frames - tok.decode(tokens)).abs().max() < 0.05
    enc_cache, dec_cache = low.new_caches(2)
    assert torch.equal(low.encode_step(video[:, 0], enc_cache), tokens[:, 0])
    assert low.decode_step(tokens[:, 0], dec_cache).dtype == torch.float32


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_tiny_tokenizer_overfits_a_few_clips(coinrun_clips, quantizer):
    torch.manual_seed(0)
    kw = dict(num_codes=64, fsq_levels=(4, 4, 4)) if quantizer == "fsq" else {}
    tok = VideoTokenizer(tokenizer_cfg(image_size=(64, 64), patch_size=8, max_frames=8,
                                       quantizer=quantizer, **kw))
    # The mean frame alone gives a PSNR near 14 dB on these clips.
    def fitted(m):
        return psnr(m(coinrun_clips)["recon"], coinrun_clips).item() > 20
    _train(tok, lambda i: (coinrun_clips,), 1500, until=fitted)
    assert fitted(tok)
    assert tok(coinrun_clips)["usage"].item() * tok.vq.num_codes >= 4  # more than a few codes in use


def _kmeans_tokenizer(clips, seed=0):
    torch.manual_seed(seed)
    tok = VideoTokenizer(tokenizer_cfg(image_size=(64, 64), patch_size=8, max_frames=8, num_codes=64,
                                       quantizer="kmeans"))
    tok.vq.fit(patchify(clips, 8).flatten(0, 2), generator=torch.Generator().manual_seed(seed))
    return tok.eval()


def test_kmeans_tokenizer_tokens_are_each_patchs_nearest_code_and_decoding_starts_at_it(coinrun_clips):
    tok = _kmeans_tokenizer(coinrun_clips)
    assert tok.encoder is None and not any(n.startswith(("enc", "to_code")) for n, _ in tok.named_parameters())
    tokens = tok.encode(coinrun_clips)
    patches = patchify(coinrun_clips, 8)
    assert torch.equal(tokens, torch.cdist(patches, tok.vq.centroids).argmin(dim=-1))
    # Before training the decoder shows the codes' own patches: the k-means reconstruction.
    codes = unpatchify(tok.vq.lookup(tokens), 8, (8, 8), 3)
    torch.testing.assert_close(tok.decode(tokens), codes.clamp(1e-3, 1 - 1e-3), atol=1e-6, rtol=0)
    # Frame by frame (the env's path) equals the whole clip, with no encoder cache to keep.
    enc_cache, dec_cache = tok.new_caches(4)
    assert enc_cache is None
    steps = torch.stack([tok.encode_step(coinrun_clips[:, t], enc_cache) for t in range(8)], dim=1)
    assert torch.equal(steps, tokens)
    frames = torch.stack([tok.decode_step(tokens[:, t], dec_cache) for t in range(8)], dim=1)
    torch.testing.assert_close(frames, tok.decode(tokens), atol=1e-5, rtol=1e-5)


def test_kmeans_tokenizer_decoder_learns_to_beat_its_codes(coinrun_clips):
    tok = _kmeans_tokenizer(coinrun_clips)
    tokens = tok.encode(coinrun_clips)
    start = psnr(tok.decode(tokens), coinrun_clips).item()

    def better(m):
        return psnr(m(coinrun_clips)["recon"], coinrun_clips).item() > start + 0.5
    _train(tok, lambda i: (coinrun_clips,), 1000, until=better)
    assert better(tok)
    assert torch.equal(tok.encode(coinrun_clips), tokens)  # training moves the decoder, never the codes


# ---- latent action model --------------------------------------------------------------------

def test_lam_shapes():
    torch.manual_seed(0)
    lam = LatentActionModel(lam_cfg()).eval()
    video, _ = moving_square(2, 5)
    out = lam(video)
    assert out["actions"].shape == (2, 4) and out["recon"].shape == (2, 4, 3, 16, 16)
    acts = lam.infer_actions(video)
    assert acts.dtype == torch.int64 and acts.shape == (2, 4) and acts.max() < 4
    with pytest.raises(ValueError, match="at least 2 frames"):
        lam.infer_actions(video[:, :1])


def test_lam_reads_a_video_longer_than_its_window_in_overlapping_windows():
    torch.manual_seed(0)
    lam = LatentActionModel(lam_cfg(max_frames=4)).eval()
    video, _ = moving_square(3, 10)
    actions = lam.infer_actions(video)
    assert actions.shape == (3, 9)
    assert torch.equal(actions[:, :3], lam.infer_actions(video[:, :4]))
    assert torch.equal(actions[:, 3:6], lam.infer_actions(video[:, 3:7]))
    assert torch.equal(actions[:, 6:], lam.infer_actions(video[:, 6:]))
    out, first = lam(video), lam(video[:, :4])
    assert torch.equal(out["actions"], actions) and out["recon"].shape == (3, 9, 3, 16, 16)
    torch.testing.assert_close(out["recon"][:, :3], first["recon"])
    # The loss is the mean over all nine transitions: windows of 3, 3 and 3 weigh alike.
    parts = [lam(video[:, w])["recon_loss"] for w in (slice(0, 4), slice(3, 7), slice(6, 10))]
    torch.testing.assert_close(out["recon_loss"], sum(parts) / 3)
    pairs = LatentActionModel(lam_cfg(max_frames=2)).eval()
    assert torch.equal(pairs.infer_actions(video),
                       torch.cat([pairs.infer_actions(video[:, t:t + 2]) for t in range(9)], dim=1))


def test_lam_with_min_history_scores_and_labels_each_transition_with_its_past():
    torch.manual_seed(0)
    lam = LatentActionModel(lam_cfg(max_frames=4, min_history=1)).eval()
    video, _ = moving_square(2, 8)
    # Windows of 4 frames overlapping by 2: each later window leaves its first transition (read
    # without a past) to the window before and labels transitions that have one past frame.
    assert [(w.start, w.stop, k) for w, k in lam.windows(8)] == [(0, 4, 0), (2, 6, 1), (4, 8, 1)]
    assert [(w.start, w.stop, k) for w, k in lam.windows(7)] == [(0, 4, 0), (2, 6, 1), (4, 8, 1)]
    actions = lam.infer_actions(video)
    assert actions.shape == (2, 7)
    assert torch.equal(actions[:, :3], lam.infer_actions(video[:, :4]))
    assert torch.equal(actions[:, 3:5], lam.infer_actions(video[:, 2:6])[:, 1:])
    assert torch.equal(actions[:, 5:], lam.infer_actions(video[:, 4:])[:, 1:])
    assert torch.equal(lam.infer_actions(video[:, :7]), actions[:, :6])
    # A window's first transition (no past frame) is not scored.
    clip = video[:, :4]
    own = lam(clip)
    torch.testing.assert_close(own["recon_loss"],
                               F.mse_loss(own["recon"][:, 1:].float(), clip[:, 2:]), atol=1e-6, rtol=0)
    out = lam(video)
    parts = [lam(video[:, w])["recon_loss"] for w, _ in lam.windows(8)]  # 2 scored transitions each
    torch.testing.assert_close(out["recon_loss"], sum(parts) / 3)
    assert torch.equal(out["actions"], actions)
    with pytest.raises(ValueError, match="at least 3 frames.*clip_len"):
        lam(video[:, :2])
    with pytest.raises(ConfigError, match="max_frames >= 3"):
        lam_cfg(max_frames=2, min_history=1)


def test_lam_is_causal():
    torch.manual_seed(0)
    lam = LatentActionModel(lam_cfg()).eval()
    video, _ = moving_square(1, 5)
    out = lam(video)
    video2 = video.clone()
    video2[:, 3] = torch.rand_like(video2[:, 3])
    out2 = lam(video2)
    # Action t (frames t -> t+1) sees frames <= t+1: actions of transitions ending before 3 stay.
    assert torch.equal(out2["actions"][:, :2], out["actions"][:, :2])
    # The decoder's prediction of frame t+1 sees frames <= t: predictions of frames 1..3 stay.
    torch.testing.assert_close(out2["recon"][:, :2], out["recon"][:, :2])


def test_residual_lam_starts_by_copying_the_frame_and_clamps_what_it_shows():
    torch.manual_seed(0)
    lam = LatentActionModel(lam_cfg(residual_decoder=True)).eval()
    video, _ = moving_square(2, 5)
    out = lam(video)
    torch.testing.assert_close(lam.decode(video, torch.randn(2, 4, 8)), video[:, :-1])
    torch.testing.assert_close(out["recon_loss"], (video[:, :-1] - video[:, 1:]).square().mean())
    with torch.no_grad():
        lam.dec_out.bias.fill_(2.0)  # a change past the pixel range: shown clamped
    assert lam(video)["recon"].max() == 1.0


@pytest.mark.parametrize("residual", [False, True])
def test_tiny_lam_overfits_and_uses_several_actions(residual):
    torch.manual_seed(0)
    lam = LatentActionModel(lam_cfg(patch_size=4, dead_code_steps=20, residual_decoder=residual))
    video, _ = moving_square(8, 5, seed=1)
    first = lam.eval()(video)["recon_loss"].item()

    def fitted(m):
        return m(video)["recon_loss"].item() < 0.5 * first and m.infer_actions(video).unique().numel() >= 2
    _train(lam, lambda i: (video,), 1500, until=fitted, every=25)
    assert fitted(lam)


def _scrolled_pairs(frames: torch.Tensor, pixels: int = 1) -> torch.Tensor:
    """Two-frame clips (3N, 2, C, H, W) of frames (N, C, H, W): the scene moved left, right, and not at all."""
    return torch.cat([torch.stack([frames, frames.roll(s, dims=-1)], dim=1) for s in (-pixels, pixels, 0)])


def test_lam_motion_classes_name_the_way_real_coinrun_scenes_moved(coinrun_clips):
    frames = coinrun_clips[:, 0]
    lam = LatentActionModel(lam_cfg(image_size=(64, 64), max_frames=2, motion_weight=1.0))
    n = len(frames)
    # 3 * (vertical sign + 1) + (horizontal sign + 1), the scene moving up / left counting +1.
    assert lam.motion_classes(_scrolled_pairs(frames))[:, 0].tolist() == [5] * n + [3] * n + [4] * n
    up = torch.stack([frames, frames.roll(-2, dims=-2)], dim=1)
    assert lam.motion_classes(up)[:, 0].tolist() == [7] * n
    # Sideways only: the horizontal sign + 1, whatever the vertical move; a head of 3 classes.
    side = LatentActionModel(lam_cfg(image_size=(64, 64), max_frames=2, motion_weight=1.0, motion_axes="horizontal"))
    assert side.motion_head.out_features == 3
    assert side.motion_classes(_scrolled_pairs(frames))[:, 0].tolist() == [2] * n + [0] * n + [1] * n
    assert side.motion_classes(up)[:, 0].tolist() == [1] * n
    up_left = torch.stack([frames, frames.roll(-2, dims=-2).roll(-1, dims=-1)], dim=1)
    assert side.motion_classes(up_left)[:, 0].tolist() == [2] * n
    out = side(up_left)
    assert out["motion_loss"] > 0 and 0 <= out["motion_acc"] <= 1


def _rising_clip(frames: torch.Tensor) -> torch.Tensor:
    """Real frames moved as a jumping player's camera moves them: still, a rise (the scene moves
    down) over two steps, still, a rise while the scene scrolls left, a scroll right, a rise
    while it scrolls right (B, 8, C, H, W)."""
    down = lambda x, k: x.roll(2 * k, dims=-2)  # noqa: E731
    return torch.stack([frames, frames, down(frames, 1), down(frames, 2), down(frames, 2),
                        down(frames, 3).roll(-1, dims=-1), down(frames, 3), down(frames, 4).roll(1, dims=-1)], dim=1)


def _history_lam(axes: str) -> LatentActionModel:
    return LatentActionModel(lam_cfg(image_size=(64, 64), max_frames=5, min_history=1, motion_weight=1.0,
                                     motion_axes=axes))


@torch.no_grad()
def _scored_motion_logits(lam: LatentActionModel, video: torch.Tensor) -> torch.Tensor:
    """The motion head's logits for the transitions a min_history-1 LAM scores (all but the
    first), flattened over batch and time."""
    return lam.motion_head(lam.vq(lam._encode(video))[0][:, 1:]).flatten(0, 1)


def test_lam_jump_classes_mark_only_the_start_of_a_rise(coinrun_clips):
    clip, n = _rising_clip(coinrun_clips[:, 0]), len(coinrun_clips)
    lam = _history_lam("jump")
    assert lam.motion_head.out_features == 6
    # 2 * (horizontal sign + 1) + (a rise began here, not in the transition before).
    assert lam.motion_classes(clip).tolist() == [[2, 3, 2, 2, 5, 0, 1]] * n
    # A clip that opens with a rise counts it as begun (no transition before it is seen).
    assert lam.motion_classes(clip[:, 1:])[:, 0].tolist() == [3] * n
    # Trained on the transitions after the first, each with its class read against the one
    # before: in a clip opening in a rise, the rise's second step is class 2, not a rise begun (3).
    video = clip[:, 1:6]
    out = lam(video)
    logits = _scored_motion_logits(lam, video)
    expected = F.cross_entropy(logits, lam.motion_classes(video)[:, 1:].flatten())
    assert out["motion_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["motion_loss"].item() != pytest.approx(
        F.cross_entropy(logits, lam.motion_classes(video[:, 1:]).flatten()).item(), rel=1e-3)


def test_lam_side_or_jump_gives_a_jump_one_class_whatever_the_sideways_move(coinrun_clips):
    clip, n = _rising_clip(coinrun_clips[:, 0]), len(coinrun_clips)
    lam = _history_lam("side_or_jump")
    assert lam.motion_head.out_features == 4
    # horizontal sign + 1 (the scene moved left: 2), or 3 where a rise began whatever the sideways move.
    assert lam.motion_classes(clip).tolist() == [[1, 3, 1, 1, 3, 0, 3]] * n
    assert lam.motion_classes(clip[:, 1:])[:, 0].tolist() == [3] * n  # a clip opening in a rise
    # Training scores the head's 4 logits against these classes, each read against the transition before.
    video = clip[:, 1:6]  # opens in a rise: its second step is not a jump's start
    out = lam(video)
    logits = _scored_motion_logits(lam, video)
    targets = lam.motion_classes(video)[:, 1:]
    assert targets[0].tolist() == [1, 1, 3]
    assert out["motion_loss"].item() == pytest.approx(F.cross_entropy(logits, targets.flatten()).item(), rel=1e-5)


def test_lam_motion_loss_is_added_with_its_weight_and_reaches_the_encoder(coinrun_clips):
    torch.manual_seed(0)
    pairs = _scrolled_pairs(coinrun_clips[:2, 0])
    lam = LatentActionModel(lam_cfg(image_size=(64, 64), max_frames=2, motion_weight=0.5))
    out = lam(pairs)
    torch.testing.assert_close(out["loss"], out["recon_loss"] + out["vq_loss"] + 0.5 * out["motion_loss"])
    out["motion_loss"].backward()
    assert lam.enc_in.weight.grad.abs().sum() > 0  # through the straight-through code
    # A longer clip is read pair by pair; its motion terms are the pairs' mean, like the others.
    clip = coinrun_clips[:1, :3]
    whole, parts = lam.eval()(clip), [lam(clip[:, t:t + 2]) for t in (0, 1)]
    for key in ("loss", "motion_loss", "motion_acc"):
        torch.testing.assert_close(whole[key], (parts[0][key] + parts[1][key]) / 2)
    plain = LatentActionModel(lam_cfg(image_size=(64, 64), max_frames=2))
    assert plain.motion_head is None and "motion_loss" not in plain(pairs)


def test_motion_loss_teaches_a_tiny_lam_which_way_real_coinrun_frames_scrolled(coinrun_clips):
    torch.manual_seed(0)
    pairs = _scrolled_pairs(coinrun_clips[:2].flatten(0, 1))  # 16 frames, each moved 1 pixel left, right, not
    lam = LatentActionModel(lam_cfg(image_size=(64, 64), max_frames=2, residual_decoder=True, motion_weight=1.0))

    def knows(m):
        return m(pairs)["motion_acc"].item() >= 0.95
    assert not knows(lam.eval())
    _train(lam, lambda i: (pairs,), 1500, until=knows, every=25)
    assert knows(lam)


# ---- dynamics -------------------------------------------------------------------------------

def test_dynamics_shapes_and_mask_rate_range():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(token_grid=(8, 8)))
    tokens = torch.randint(0, 16, (64, 3, 64))
    actions = torch.randint(0, 4, (64, 2))
    out = dyn(tokens, actions)
    assert out["logits"].shape == (64, 3, 64, 16)
    rate = out["mask_rate"]
    assert rate.shape == (64,) and rate.min() >= 0.5 and rate.max() <= 1.0
    assert rate.std() > 0.05  # drawn per sample, not per batch
    mask = out["mask"]
    assert not mask[:, 0].any()  # frame 1 is never masked
    frac = mask[:, 1:].float().mean(dim=(1, 2))
    assert (frac - rate).abs().max() < 0.15


def test_dynamics_rejects_bad_actions():
    dyn = DynamicsModel(dynamics_cfg())
    tokens = torch.randint(0, 16, (1, 3, 4))
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 4\)"):
        dyn(tokens, torch.tensor([[0, 9]]))
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        dyn(tokens, torch.tensor([[0]]))


def test_dynamics_is_causal():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg()).eval()
    tokens = torch.randint(0, 16, (2, 5, 4))
    actions = torch.randint(0, 4, (2, 4))
    none = torch.zeros(2)
    base = dyn(tokens, actions, mask_rate=none)["logits"]
    tokens2, actions2 = tokens.clone(), actions.clone()
    tokens2[:, 3:] = (tokens2[:, 3:] + 1) % 16
    actions2[:, 2:] = (actions2[:, 2:] + 1) % 4
    out = dyn(tokens2, actions2, mask_rate=none)["logits"]
    assert torch.equal(out[:, :3], base[:, :3])
    assert not torch.allclose(out[:, 3], base[:, 3])


def _observed(dyn, frames=4):
    """A cache holding ``frames`` random frames of 3 rows, with the tokens and actions behind it."""
    tokens = torch.randint(0, 16, (3, frames, 4))
    actions = torch.randint(0, 4, (3, frames - 1))
    cache = dyn.new_cache(3)
    for t in range(frames):
        dyn.observe(cache, tokens[:, t], None if t == 0 else actions[:, t - 1])
    return cache, tokens, actions


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("kw, frames", [(dict(commit_noise=0.0), 4), (dict(commit_noise=4.5), 4),
                                        (dict(token_pixels=6), 4), (dict(action_guidance=1.5), 4),
                                        (dict(action_guidance=1.5), 8)])  # 8: past the 6-frame window
def test_cached_sampling_equals_full_recompute(kw, frames):
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(**kw)).eval()
    if kw.get("token_pixels"):
        dyn.set_code_pixels(torch.rand(16, 6))
    cache, tokens, actions = _observed(dyn, frames)
    action = torch.tensor([0, 1, 3])
    cached = dyn.sample_next(cache, action, generators=_gens((1, 2, 3)))
    full = dyn.sample_next_uncached(tokens, actions, action, generators=_gens((1, 2, 3)))
    assert torch.equal(cached, full)
    assert cache.length.tolist() == [min(frames, 5)] * 3  # sampling did not touch the cache


def test_generation_is_seeded_per_row_and_slides_past_max_frames():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg()).eval()
    prompt = torch.randint(0, 16, (3, 1, 4))
    actions = torch.randint(0, 4, (3, 9))  # 10 frames > max_frames=6
    batched = dyn.generate(prompt, actions, generators=_gens([5, 6, 7]))
    assert batched.shape == (3, 10, 4) and batched.max() < 16
    single = dyn.generate(prompt[1:2], actions[1:2], generators=_gens([6]))
    assert torch.equal(batched[1:2], single)
    again = dyn.generate(prompt, actions, generators=_gens([5, 6, 7]))
    assert torch.equal(again, batched)


def test_actions_condition_the_frame_they_produce():
    # A toy world where the action alone decides the next frame: every token of frame t+1 is
    # (token of frame t + shift[a_t]) mod V. An action added to the wrong frame cannot learn it.
    torch.manual_seed(0)
    cfg = dynamics_cfg(vocab_size=8, max_frames=4, maskgit_steps=2, temperature=0.0)
    dyn = DynamicsModel(cfg)
    shift = torch.tensor([1, 3, 5, 7])

    def batch(_):
        start = torch.randint(0, 8, (64, 1))
        acts = torch.randint(0, 4, (64, 3))
        frames = [start]
        for t in range(3):
            frames.append((frames[-1] + shift[acts[:, t:t + 1]]) % 8)
        return torch.cat(frames, 1)[:, :, None].expand(64, 4, 4).contiguous(), acts

    tokens, acts = batch(0)

    def learned(m):
        gen = m.generate(tokens[:, :1], acts)
        return (gen[:, 1] == tokens[:, 1]).float().mean() > 0.95 and (gen == tokens).float().mean() > 0.9
    _train(dyn, batch, 4000, lr=3e-3, until=learned)
    assert learned(dyn)
    # The same rollout with each action one frame late gets the first move wrong.
    late = dyn.generate(tokens[:, :1], torch.roll(acts, 1, dims=1))
    assert (late[:, 1] == tokens[:, 1]).float().mean() < 0.5


def test_reward_and_termination_heads_learn_and_predict():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(reward_head=True))

    def batch(_):
        # Each frame is one token repeated; the reward is visible in the frame itself. The heads
        # read a trunk that MaskGIT alone trains, so what they need must survive its pooling.
        tokens = torch.randint(0, 16, (32, 3, 1)).expand(32, 3, 4).contiguous()
        acts = torch.randint(0, 4, (32, 2))
        rewards = (tokens[:, :, 0] < 8).float()
        dones = torch.zeros(32, 3)
        return tokens, acts, rewards, dones

    tokens, acts, rewards, dones = batch(0)
    first = dyn(tokens, acts, rewards, dones)["reward_loss"].item()

    def predicted(m):
        h = m.observe(m.new_cache(32), tokens[:, 0], None)
        r, d = m.predict_reward_done(h, acts[:, 0])
        return ((r > 0.5).float() == rewards[:, 0]).float().mean() > 0.8
    _train(dyn, batch, 2000, until=predicted)
    assert dyn(tokens, acts, rewards, dones)["reward_loss"].item() < 0.75 * first
    h = dyn.observe(dyn.new_cache(32), tokens[:, 0], None)
    r, d = dyn.predict_reward_done(h, acts[:, 0])
    assert r.shape == d.shape == (32,) and ((d >= 0) & (d <= 1)).all()
    assert predicted(dyn)


def test_clean_prefix_samples_mask_only_frames_after_a_cut():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(token_grid=(4, 4), clean_prefix_prob=0.5))
    tokens = torch.randint(0, 16, (256, 5, 16))
    mask = dyn(tokens, torch.randint(0, 4, (256, 4)), mask_rate=torch.ones(256))["mask"]
    per_frame = mask.any(dim=2)  # (B, T): which frames have masked tokens
    assert not per_frame[:, 0].any()
    # At rate 1 a frame is masked whole or not at all, and masked frames form a suffix.
    assert torch.equal(mask.all(dim=2), per_frame)
    first = per_frame.float().argmax(dim=1)
    assert torch.equal(per_frame, torch.arange(5)[None] >= first[:, None])
    prefixed = first > 1  # a clean frame besides the first: a clean-prefix sample
    assert 0.25 < prefixed.float().mean() < 0.5  # half the samples, 3 of 4 cuts leave a prefix
    assert set(first[prefixed].tolist()) == {2, 3, 4}


def test_context_noise_replaces_visible_tokens_in_training_only():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(token_grid=(4, 4), context_noise=0.5))
    seen = []
    dyn.token_emb.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    tokens, actions = torch.randint(0, 16, (512, 3, 16)), torch.randint(0, 4, (512, 2))
    mask = dyn(tokens, actions, mask_rate=torch.full((512,), 0.5))["mask"]
    changed = (seen[-1] != tokens) & ~mask
    assert torch.equal(seen[-1][mask], torch.full_like(tokens[mask], dyn.mask_id))
    # Replaced tokens are drawn uniformly, so 15 of 16 draws differ: the visible share that
    # changed is 15/16 of the mean of U(0, 0.5), and samples differ in their share.
    share = changed.sum(dim=(1, 2)) / (~mask).sum(dim=(1, 2))
    assert 0.2 < share.mean() < 0.27 and share.max() > 0.4 and share.min() < 0.05
    assert changed[:, 0].any() and changed[:, 1:].any()
    assert seen[-1][~mask].max() < dyn.mask_id  # replacements are codes, never the mask
    dyn.eval()
    dyn(tokens, actions, mask_rate=torch.full((512,), 0.5))
    evaluated = seen[-1]
    assert torch.equal(evaluated[evaluated != dyn.mask_id], tokens[evaluated != dyn.mask_id])
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"context_noise must be in \[0, 1\)"):
            dynamics_cfg(context_noise=bad)


def test_a_given_past_replaces_the_first_frames_in_view_and_takes_them_out_of_the_loss():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(token_grid=(4, 4))).eval()
    seen = []
    dyn.token_emb.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    tokens, actions = torch.randint(0, 16, (6, 5, 16)), torch.randint(0, 4, (6, 4))
    past = torch.randint(0, 16, (6, 2, 16))
    rate = torch.full((6,), 1.0)
    out = dyn(tokens, actions, mask_rate=rate, past=past)
    assert not out["mask"][:, :2].any() and out["mask"][:, 2:].all()
    assert torch.equal(seen[-1][:, :2], past)
    # The recorded first frames are out of sight: changing them changes nothing, while the
    # targets are the recorded later frames.
    other = tokens.clone()
    other[:, :2] = torch.randint(0, 16, (6, 2, 16))
    again = dyn(other, actions, mask_rate=rate, past=past)
    assert torch.equal(again["logits"], out["logits"]) and torch.equal(again["ce"], out["ce"])
    ce = F.cross_entropy(out["logits"][:, 2:].reshape(-1, 16), tokens[:, 2:].reshape(-1))
    assert torch.allclose(out["ce"], ce, atol=1e-5)
    assert not torch.equal(dyn(tokens, actions, mask_rate=rate)["logits"][:, 2:], out["logits"][:, 2:])
    for bad in (torch.zeros(6, 0, 16, dtype=torch.long), torch.zeros(6, 5, 16, dtype=torch.long),
                torch.zeros(5, 2, 16, dtype=torch.long), torch.zeros(6, 2, 15, dtype=torch.long)):
        with pytest.raises(ValueError, match="past must be"):
            dyn(tokens, actions, past=bad)


def test_own_past_is_the_models_rollout_from_the_first_frame_in_eval_mode():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(token_grid=(4, 4), context_noise=0.5, temperature=1.0))
    tokens, actions = torch.randint(0, 16, (3, 6, 16)), torch.randint(0, 4, (3, 5))
    torch.manual_seed(1)
    past = dyn.own_past(tokens, actions, 3)
    assert dyn.training  # the training mode it had is given back
    dyn.eval()
    torch.manual_seed(1)
    ref = dyn.generate(tokens[:, :1], actions[:, :3])
    assert past.shape == (3, 3, 16) and torch.equal(past, ref[:, 1:])
    # Drawn from the torch RNG when not given: 1..T-2 frames, so a target is always left.
    lengths = set()
    for seed in range(40):
        torch.manual_seed(seed)
        lengths.add(dyn.own_past(tokens, actions).shape[1])
    assert lengths == {1, 2, 3, 4}
    for frames in (0, 5):
        with pytest.raises(ValueError, match=r"frames must be in \[1, 4\]"):
            dyn.own_past(tokens, actions, frames)
    with pytest.raises(ValueError, match="3 or more frames"):
        dyn.own_past(tokens[:, :2], actions[:, :1])
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"rollout_prob must be in \[0, 1\]"):
            dynamics_cfg(rollout_prob=bad)


def test_changed_token_weight_pays_more_for_the_tokens_that_differ_from_the_frame_before():
    torch.manual_seed(0)
    weighted = DynamicsModel(dynamics_cfg(token_grid=(4, 4), changed_token_weight=3.0))
    plain = DynamicsModel(dynamics_cfg(token_grid=(4, 4)))
    plain.load_state_dict(weighted.state_dict())
    tokens = torch.randint(0, 16, (6, 1, 16)).repeat(1, 4, 1)  # a still scene ...
    tokens[:, 2, :5] = (tokens[:, 2, :5] + 1) % 16  # ... whose frame 3 changes in 5 places
    actions, rate = torch.randint(0, 4, (6, 3)), torch.full((6,), 0.8)
    torch.manual_seed(1)
    out = weighted(tokens, actions, mask_rate=rate)
    torch.manual_seed(1)
    ref = plain(tokens, actions, mask_rate=rate)
    assert torch.equal(out["mask"], ref["mask"]) and torch.allclose(ref["loss"], ref["ce"])
    mask = out["mask"]
    changed = torch.zeros_like(mask)
    changed[:, 1:] = tokens[:, 1:] != tokens[:, :-1]
    assert (changed & mask).sum() > 0 and (changed & mask).sum() < mask.sum()
    ce = torch.nn.functional.cross_entropy(out["logits"][mask], tokens[mask], reduction="none")
    w = 1 + 2 * changed[mask].float()
    assert torch.allclose(out["loss"], (w * ce).sum() / w.sum(), atol=1e-6)
    assert torch.allclose(out["ce"], ref["ce"], atol=1e-6)  # reported unweighted, comparable across runs
    with pytest.raises(ValueError, match="changed_token_weight must be > 0"):
        dynamics_cfg(changed_token_weight=0.0)


def test_changed_token_loss_compiles_and_matches_eager():
    # Training with --compile runs this through inductor, whose CPU code for the first version
    # (the changed flags assigned into a slice of a zeros tensor) did not build.
    from genie_env.models.dynamics import changed_token_loss
    tokens = torch.randint(0, 4, (3, 4, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.rand(3, 4, 16, generator=torch.Generator().manual_seed(1)) < 0.5
    ce = torch.rand(int(mask.sum()), generator=torch.Generator().manual_seed(2))
    eager = changed_token_loss(ce, tokens, mask, 3.0)
    assert torch.allclose(torch.compile(changed_token_loss)(ce, tokens, mask, 3.0), eager)
    changed = torch.zeros_like(mask)
    changed[:, 1:] = tokens[:, 1:] != tokens[:, :-1]
    w = 1 + 2 * changed[mask].float()
    assert torch.allclose(eager, (w * ce).sum() / w.sum())


def test_commit_noise_is_seeded_per_row_and_changes_the_samples():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(commit_noise=4.5, temperature=1.0)).eval()
    plain = DynamicsModel(dynamics_cfg(temperature=1.0)).eval()
    plain.load_state_dict(dyn.state_dict())
    cache, tokens, actions = _observed(dyn, frames=3)
    action = torch.tensor([0, 1, 3])
    batched = dyn.sample_next(cache, action, generators=_gens([1, 2, 3]))
    single = dyn.sample_next_uncached(tokens[1:2], actions[1:2], action[1:2], generators=_gens([2]))
    assert torch.equal(batched[1:2], single)
    # The noise changes which tokens come out: over many seeds the two samplers differ.
    differ = sum(not torch.equal(dyn.sample_next(cache, action, generators=_gens([s, s + 1, s + 2])),
                                 plain.sample_next(cache, action, generators=_gens([s, s + 1, s + 2])))
                 for s in range(10))
    assert differ > 0


def test_sampled_passes_draw_only_the_first_passes_and_the_rest_take_the_argmax():
    from genie_env.models.dynamics import maskgit_sample
    n, vocab, steps = 64, 6, 4
    logits = torch.randn(2, n, vocab, generator=torch.Generator().manual_seed(0)) * 0.3  # flat: draws vary

    def sample(passes, noise=0.0):
        gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
        return maskgit_sample(lambda tok: logits, 2, n, vocab, steps, 1.0, "cpu", gens, noise, passes)

    every = sample(None)
    assert torch.equal(sample(steps), every) and torch.equal(sample(steps + 3), every)
    # The first pass commits n - floor(n cos(pi/8)) = 5 tokens; they are drawn as in the plain
    # sampler (same uniforms), and every later token is the argmax.
    first_only = sample(1)
    off_argmax = first_only != logits.argmax(-1)
    assert (off_argmax.sum(dim=1) <= 5).all() and off_argmax.any()
    assert torch.equal(first_only[off_argmax], every[off_argmax])
    assert ((every != logits.argmax(-1)).sum(dim=1) > 5).all()  # drawing on would have strayed further
    assert ((sample(1, noise=2.0) != logits.argmax(-1)).sum(dim=1) <= 5).all()
    with pytest.raises(ConfigError, match=r"sampled_passes must be >= 1 \(null: every MaskGIT pass samples\)"):
        dynamics_cfg(sampled_passes=0)


def test_sampled_passes_cached_equals_recompute():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(commit_noise=1.0, temperature=1.0, sampled_passes=2)).eval()
    cache, tokens, actions = _observed(dyn, frames=3)
    action = torch.tensor([0, 1, 3])
    assert torch.equal(dyn.sample_next(cache, action, generators=_gens([1, 2, 3])),
                       dyn.sample_next_uncached(tokens, actions, action, generators=_gens([1, 2, 3])))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_action_guidance_samples_from_the_guided_distribution(dropout):
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(temperature=0.0, action_dropout=dropout)).eval()
    cache, tokens, actions = _observed(dyn, frames=3)
    action = torch.tensor([0, 1, 3])
    # One greedy pass commits every token: the argmax of (1 + g) log p(x|a) - g log p(x|reference),
    # the reference being the mean action, or "no action" for a model trained with action dropout.
    g = 2.0
    masked = torch.full((3, 4), dyn.mask_id)
    emb = dyn.token_embed(masked)
    with torch.no_grad():
        logp = lambda act: torch.log_softmax(dyn.logits(dyn.transformer.step(emb + act, cache, commit=False)), -1)
        cond = logp(dyn.action_emb(action).unsqueeze(-2))
        ref_act = dyn.action_emb.weight[4] if dropout else dyn.action_emb.weight[:4].mean(0)
        ref = logp(ref_act.expand(3, 1, -1))
    want = ((1 + g) * cond - g * ref).argmax(-1)
    assert torch.equal(dyn.sample_next(cache, action, steps=1, guidance=g), want)
    assert torch.equal(dyn.sample_next_uncached(tokens, actions, action, steps=1, guidance=g), want)
    assert torch.equal(dyn.sample_next(cache, action, steps=1, guidance=0.0), cond.argmax(-1))
    assert not torch.equal(want, cond.argmax(-1))  # the guidance changes the frame here
    # The config's value is the default, an argument overrides it.
    guided = DynamicsModel(dynamics_cfg(temperature=0.0, action_guidance=g, action_dropout=dropout)).eval()
    guided.load_state_dict(dyn.state_dict())
    assert torch.equal(guided.sample_next(cache, action, steps=1), want)
    assert cache.length.tolist() == [3, 3, 3]
    for bad in (-0.5, float("nan"), True):
        with pytest.raises(ValueError, match="action_guidance must be a finite number >= 0"):
            dynamics_cfg(action_guidance=bad)


def test_action_dropout_trains_the_no_action_input_in_place_of_the_actions():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(action_dropout=0.999999))
    tokens = torch.randint(0, 16, (2, 3, 4))
    a, b = torch.tensor([[0, 1], [2, 3]]), torch.tensor([[3, 3], [1, 0]])

    def loss(actions, seed=1):
        torch.manual_seed(seed)
        return dyn(tokens, actions)["loss"]

    # Training: every action input is dropped, so the actions no longer matter and only the
    # "no action" embedding (row 4) learns; evaluation sees the actions again.
    assert torch.equal(loss(a), loss(b))
    dyn.zero_grad()
    loss(a).backward()
    grad = dyn.action_emb.weight.grad
    assert grad[:4].abs().sum() == 0 and grad[4].abs().sum() > 0
    dyn.eval()
    assert not torch.equal(loss(a), loss(b))
    plain = DynamicsModel(dynamics_cfg()).eval()  # in evaluation the dropout is off
    plain.load_state_dict(dyn.state_dict())
    torch.manual_seed(1)
    assert torch.equal(plain(tokens, a)["loss"], loss(a))
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"action_dropout must be in \[0, 1\)"):
            dynamics_cfg(action_dropout=bad)


def test_reward_head_learns_in_scaled_units_and_leaves_the_trunk_alone():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(reward_head=True, reward_scale=10.0))
    tokens = torch.randint(0, 16, (32, 3, 4))
    acts = torch.randint(0, 4, (32, 2))
    rewards = 10.0 * (tokens[:, :, 0] < 8).float()
    out = dyn(tokens, acts, rewards, torch.zeros(32, 3))
    out["reward_loss"].backward()
    # The head's loss reaches the head only, never the shared transformer.
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in dyn.transformer.parameters())
    assert dyn.reward_done[0].weight.grad.abs().max() > 0
    h = dyn.eval().observe(dyn.new_cache(32), tokens[:, 0], None)
    r, _ = dyn.predict_reward_done(h, acts[:, 0])
    raw, _ = dyn._reward_done(h, acts[:, 0])
    torch.testing.assert_close(r, 10.0 * raw)


def test_token_pixels_embed_and_score_codes_by_their_patches():
    torch.manual_seed(0)
    dyn = DynamicsModel(dynamics_cfg(token_pixels=6)).eval()
    with pytest.raises(ValueError, match=r"shape \(16, 6\)"):
        dyn.set_code_pixels(torch.rand(16, 5))
    with pytest.raises(ValueError, match="token_pixels: 0"):
        DynamicsModel(dynamics_cfg()).set_code_pixels(torch.rand(16, 6))
    pixels = torch.rand(16, 6)
    pixels[9] = pixels[3]  # two codes that look the same
    dyn.set_code_pixels(pixels)
    stored = dyn.code_pixels
    assert torch.allclose(stored[:-1].mean(0), torch.zeros(6), atol=1e-5)  # standardized per pixel
    assert torch.allclose(stored[:-1].std(0), torch.ones(6), atol=1e-4)
    assert torch.equal(stored[-1], torch.zeros(6))  # the mask token has no patch
    h = torch.randn(5, 32)
    with torch.no_grad():
        dyn.head.weight.zero_()
        dyn.head.bias.zero_()
        logits = dyn.logits(h)
        emb = dyn.token_embed(torch.tensor([3, 9, 4]))
    # Without the per-code head, look-alike codes score alike and the others do not; their input
    # embeddings differ only by the per-code table.
    assert torch.allclose(logits[:, 3], logits[:, 9]) and not torch.allclose(logits[:, 3], logits[:, 4])
    assert torch.allclose(emb[0] - dyn.token_emb.weight[3], emb[1] - dyn.token_emb.weight[9])
    # The table is a buffer: it travels with the state dict.
    other = DynamicsModel(dynamics_cfg(token_pixels=6))
    other.load_state_dict(dyn.state_dict())
    assert torch.equal(other.code_pixels, stored)
