import numpy as np
import torch

from genie_env.metrics import (colour_histograms, decode_long, encode_long, first_pass_tokens, frame_shifts, global_shifts,
                               horizontal_scrolls, scrolls_beside, nearest_histogram_distance, one_step_predictions,
                               patch_kmeans_reconstruct, psnr, rightward_progress)
from genie_env.models import DynamicsModel, LatentActionModel, VideoTokenizer
from tests.tiny import dynamics_cfg, lam_cfg, moving_square, tokenizer_cfg


def test_rightward_progress_measures_the_scroll():
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (16, 40, 3), dtype=np.uint8)
    prev, moved_right = scene[:, 10:26], scene[:, 13:29]  # the view slides right: the scene moves left
    assert rightward_progress(prev, 0, moved_right) == 3
    assert rightward_progress(moved_right, 0, prev) == -3
    assert rightward_progress(prev, 0, prev) == 0


def test_frame_shifts_finds_each_pairs_two_dimensional_motion():
    rng = np.random.default_rng(1)
    scene = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    view = lambda y, x: scene[y:y + 16, x:x + 16]  # noqa: E731 - a camera at (y, x)
    prev = np.stack([view(10, 10)] * 4)
    obs = np.stack([view(12, 10), view(10, 7), view(8, 11), view(10, 10)])  # camera down, left, up+right, still
    assert frame_shifts(prev, obs, max_dx=4, max_dy=4).tolist() == [[2, 0], [0, -3], [-2, 1], [0, 0]]
    assert frame_shifts(prev[1:4:2], obs[1:4:2], max_dx=4).tolist() == [[0, -3], [0, 0]]  # horizontal only
    # The torch form takes channels-first frames with any leading axes: (2, 2, C, H, W) -> (2, 2, 2).
    chw = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).reshape(2, 2, 3, 16, 16)  # noqa: E731
    assert global_shifts(chw(prev), chw(obs), max_dx=4, max_dy=4).tolist() == [[[2, 0], [0, -3]], [[-2, 1], [0, 0]]]


def test_horizontal_scrolls_of_each_consecutive_pair_of_each_video():
    scene = torch.rand(3, 16, 40, generator=torch.Generator().manual_seed(2))
    pan = torch.stack([scene[..., x:x + 16] for x in (10, 11, 12, 13)])  # camera right 1 px a frame
    mixed = torch.stack([scene[..., x:x + 16] for x in (10, 10, 8, 8)])  # still, 2 px left, still
    assert horizontal_scrolls(torch.stack([pan, mixed])).tolist() == [[1, 1, 1], [0, -2, 0]]
    blurred = torch.nn.functional.avg_pool2d(pan, 5, stride=1, padding=2)  # smooth frames keep the motion
    assert horizontal_scrolls(blurred[None]).tolist() == [[1, 1, 1]]
    # Each real frame beside what was put after it: a still "prediction" scrolls nothing, the
    # real next frames scroll as the video does.
    video = torch.stack([pan, mixed])
    assert scrolls_beside(video, video[:, :-1]).tolist() == [[0, 0, 0], [0, 0, 0]]
    assert scrolls_beside(video, video[:, 1:]).tolist() == [[1, 1, 1], [0, -2, 0]]


def test_long_encode_and_decode_equal_the_windowed_ones_and_slide_past_the_window():
    torch.manual_seed(0)
    tok = VideoTokenizer(tokenizer_cfg(max_frames=4)).eval()
    video, _ = moving_square(2, 4)
    tokens = encode_long(tok, video)
    assert torch.equal(tokens, tok.encode(video))
    torch.testing.assert_close(decode_long(tok, tokens), tok.decode(tokens), atol=1e-5, rtol=1e-5)
    long_video, _ = moving_square(2, 11)
    assert encode_long(tok, long_video).shape == (2, 11, 16)
    assert decode_long(tok, encode_long(tok, long_video)).shape == long_video.shape


def test_colour_distance_is_zero_for_a_real_palette_and_one_for_foreign_colours():
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1
    blue = torch.zeros(1, 3, 8, 8)
    blue[:, 2] = 1
    half = torch.cat([red[..., :4], blue[..., 4:]], dim=-1)
    ref = colour_histograms(torch.cat([red, half]))
    assert ref.shape == (2, 512) and torch.allclose(ref.sum(1), torch.ones(2))
    d = nearest_histogram_distance(torch.cat([red, blue, half]), ref)
    torch.testing.assert_close(d, torch.tensor([0.0, 0.5, 0.0]))
    green = torch.zeros(1, 3, 8, 8)
    green[:, 1] = 1
    assert nearest_histogram_distance(green, ref).item() == 1.0


def test_patch_kmeans_baseline_is_exact_on_few_patch_kinds_and_lossy_on_noise():
    g = torch.Generator().manual_seed(0)
    kinds = torch.rand(4, 3, 4, 4, generator=g)
    layout = torch.randint(0, 4, (6, 4, 4), generator=g)  # 6 frames of 4x4 patches
    frames = torch.stack([torch.cat([torch.cat(list(kinds[row]), dim=-1) for row in f], dim=-2) for f in layout])
    assert frames.shape == (6, 3, 16, 16)
    recon = patch_kmeans_reconstruct(frames[:4], frames[4:], patch=4, codes=4)
    assert recon.shape == (2, 3, 16, 16) and psnr(recon, frames[4:]) > 60  # every patch is a centroid
    noise = torch.rand(6, 3, 16, 16, generator=g)
    assert psnr(patch_kmeans_reconstruct(noise[:4], noise[4:], patch=4, codes=4), noise[4:]) < 15


def test_one_step_predictions_start_each_frame_from_the_real_past():
    torch.manual_seed(0)
    tok = VideoTokenizer(tokenizer_cfg()).eval()
    dyn = DynamicsModel(dynamics_cfg(token_grid=(4, 4), vocab_size=32, temperature=0.0)).eval()
    video, actions = moving_square(2, 5)
    tokens = tok.encode(video)
    pred = one_step_predictions(tok, dyn, tokens, actions)
    assert pred.shape == (2, 4, 3, 16, 16)
    for t in range(4):  # frame t+1 from the real tokens 0..t, decoded after them
        nxt = dyn.sample_next_uncached(tokens[:, :t + 1], actions[:, :t], actions[:, t])
        want = tok.decode(torch.cat([tokens[:, :t + 1], nxt[:, None]], dim=1))[:, -1]
        torch.testing.assert_close(pred[:, t], want, atol=1e-5, rtol=1e-5)
    # A different real frame 2 leaves the predictions of frames 1 and 2 alone, not those after it.
    other = video.clone()
    other[:, 2] = video[:, 2].flip(-1)
    again = one_step_predictions(tok, dyn, tok.encode(other), actions)
    assert torch.equal(again[:, :2], pred[:, :2]) and not torch.allclose(again[:, 2:], pred[:, 2:])


def test_first_pass_tokens_count_what_a_one_pass_greedy_decode_from_the_real_past_gets_right():
    torch.manual_seed(0)
    tok = VideoTokenizer(tokenizer_cfg()).eval()
    dyn = DynamicsModel(dynamics_cfg(token_grid=(4, 4), vocab_size=32)).eval()
    video, actions = moving_square(3, 5)
    tokens = tok.encode(video)
    got = first_pass_tokens(dyn, tokens, actions)
    want = dict.fromkeys(got, 0)
    for t in range(1, 5):  # frame t from the real frames before it and the action that led to it
        guess = dyn.sample_next_uncached(tokens[:, :t], actions[:, :t - 1], actions[:, t - 1], steps=1, temperature=0)
        changed = tokens[:, t] != tokens[:, t - 1]
        want["changed"] += int(changed.sum())
        want["changed_right"] += int(((guess == tokens[:, t]) & changed).sum())
        want["changed_copied"] += int(((guess == tokens[:, t - 1]) & changed).sum())
        want["stayed"] += int((~changed).sum())
        want["stayed_right"] += int(((guess == tokens[:, t]) & ~changed).sum())
    assert {k: int(v) for k, v in got.items()} == want
    assert want["changed"] > 0 and want["stayed"] > 0  # the moving square changes some tokens, not all
    still = first_pass_tokens(dyn, tokens[:, :1].expand(-1, 4, -1), actions[:, :3])
    assert int(still["changed"]) == 0 and int(still["stayed"]) == 3 * 3 * 16
