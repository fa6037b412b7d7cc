import torch

from genie_env.nn.st_transformer import STTransformer


def make(depth=2, max_frames=5, **kw):
    torch.manual_seed(0)
    return STTransformer(dim=32, depth=depth, heads=4, num_tokens=6, max_frames=max_frames, qk_dim=16, **kw).eval()


def test_output_shape_and_dtype():
    m = make()
    x = torch.randn(2, 5, 6, 32)
    y = m(x)
    assert y.shape == x.shape and y.dtype == torch.float32


def test_future_frames_do_not_change_past_outputs():
    m = make()
    x = torch.randn(2, 5, 6, 32)
    base = m(x)
    for t in range(4):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
        out = m(x2)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_cached_steps_equal_full_recompute():
    m = make()
    x = torch.randn(3, 5, 6, 32)
    full = m(x)
    cache = m.new_cache(3)
    steps = torch.stack([m.step(x[:, t], cache, commit=True) for t in range(5)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_uncommitted_step_leaves_cache_unchanged():
    m = make()
    x = torch.randn(2, 3, 6, 32)
    cache = m.new_cache(2)
    m.step(x[:, 0], cache, commit=True)
    keys = [k.clone() for k in cache.keys]
    a = m.step(x[:, 1], cache, commit=False)
    b = m.step(x[:, 1], cache, commit=False)
    assert torch.equal(a, b)
    assert all(torch.equal(k, k0) for k, k0 in zip(cache.keys, keys))
    assert cache.pos.tolist() == [1, 1] and cache.length.tolist() == [1, 1]


def test_window_slides_past_max_frames_like_a_recompute_of_the_window():
    # With one layer a rolling cache is exactly a recompute over the last max_frames frames:
    # this pins the ring-buffer slots and the rotary positions of the slide.
    m = make(depth=1, max_frames=4)
    x = torch.randn(2, 11, 6, 32)
    cache = m.new_cache(2)
    for t in range(11):
        out = m.step(x[:, t], cache, commit=True)
        assert int(cache.length.max()) == min(t + 1, 3)
        window = x[:, max(0, t - 3): t + 1]
        torch.testing.assert_close(out, m(window)[:, -1], atol=1e-5, rtol=1e-5)
    assert cache.pos.tolist() == [11, 11]


def test_rows_reset_independently():
    m = make()
    x = torch.randn(2, 5, 6, 32)
    cache = m.new_cache(2)
    for t in range(3):
        m.step(x[:, t], cache, commit=True)
    cache.reset(torch.tensor([True, False]))
    out = m.step(x[:, 3], cache, commit=True)
    # Row 0 starts afresh at frame 3; row 1 continues its clip.
    torch.testing.assert_close(out[0], m(x[:1, 3:4])[0, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], m(x[1:, :4])[0, 3], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 4, 6, 32)
    grads = []
    for ckpt in (False, True):
        m = make(grad_checkpointing=ckpt).train()
        m(x).square().mean().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
