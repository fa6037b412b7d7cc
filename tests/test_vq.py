import torch
import torch.nn.functional as F

import pytest

from genie_env.nn.vq import FiniteScalarQuantizer, PatchCodebook, VectorQuantizer, restore_reseeded_codes


def test_picks_the_nearest_unit_code():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 8).eval()
    z = torch.randn(50, 8)
    _, idx, _ = vq(z)
    d = torch.cdist(F.normalize(z, dim=-1), vq.codes())
    assert torch.equal(idx, d.argmin(dim=-1))
    assert torch.equal(vq.nearest(z), idx)


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 8).eval()
    w = torch.randn(10, 8)
    z = torch.randn(10, 8, requires_grad=True)
    z_q, idx, _ = vq(z)
    torch.testing.assert_close(z_q, vq.lookup(idx))  # forward value is the code
    (z_q * w).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (F.normalize(z2, dim=-1) * w).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)  # backward is the identity through the codes


def test_loss_pulls_codebook_and_commitment():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 8, commitment=0.25)
    z = torch.randn(32, 8, requires_grad=True)
    _, idx, stats = vq(z)
    stats["loss"].backward()
    assert vq.codebook.grad.abs().sum() > 0 and z.grad.abs().sum() > 0
    e = vq.lookup(idx).detach()
    zn = F.normalize(z.detach(), dim=-1)
    torch.testing.assert_close(stats["loss"].detach(), 1.25 * F.mse_loss(e, zn))


def test_dead_codes_are_reseeded_from_the_batch_away_from_live_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, dead_code_steps=3, kmeans_init=False).train()
    e1, e2 = torch.eye(4)[0], torch.eye(4)[1]
    vq.codebook.data[0] = e1
    vq.codebook.data[1:] = -e1 + 0.05 * torch.randn(7, 4)
    # Every vector is nearest to code 0, so codes 1..7 go unused; 8 of the 64 lie far from it.
    batch = e1 + 0.01 * torch.randn(64, 4)
    far = F.normalize(e1 + 1.5 * e2, dim=0)
    batch[:8] = far + 0.01 * torch.randn(8, 4)
    for _ in range(2):
        _, idx, stats = vq(batch)
    assert stats["usage"].item() == 1 / 8
    old = vq.codes().detach().clone()
    vq(batch)  # third unused step: codes 1..7 are re-seeded
    new = vq.codes().detach()
    assert torch.equal(new[0], old[0])
    # Each re-seeded code is one of the batch's vectors, and the far group, where no code was,
    # got one (a uniform pick would land 7 of 7 beside code 0 most of the time: 8 of 64 far).
    d = torch.cdist(new[1:], F.normalize(batch, dim=-1))
    assert d.min(dim=1).values.max() < 1e-3  # others lie >= 0.01 away
    assert (d[:, :8].min(dim=1).values < 1e-3).any()
    assert vq.steps_unused.max() < 3


def test_reseeded_codes_keep_their_place_and_lose_stale_adam_moments():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, dead_code_steps=2, kmeans_init=False).train()
    opt = torch.optim.Adam(vq.parameters(), lr=0.1)
    vq.codebook.data[1:] = -vq.codebook.data[0]  # all vectors go to code 0
    batch = vq.codes()[0].detach() + 0.01 * torch.randn(64, 4)
    for step in range(2):
        _, _, stats = vq(batch)
        opt.zero_grad()
        stats["loss"].backward()
        opt.step()
        if step == 0:
            assert vq.reseeded is None
            # Pretend the dead codes once moved: their moments are non-zero.
            opt.state[vq.codebook]["exp_avg"][1:] = 1.0
    rows, new = vq.reseeded
    assert rows[1:].all() and not rows[0]
    restore_reseeded_codes(vq, opt)
    torch.testing.assert_close(vq.codebook.data[rows], new)  # the stale step is undone
    assert opt.state[vq.codebook]["exp_avg"][1:].abs().max() == 0
    assert opt.state[vq.codebook]["exp_avg_sq"][1:].abs().max() == 0
    assert opt.state[vq.codebook]["exp_avg"][0].abs().max() > 0  # the live code keeps its moments


def test_kmeans_init_puts_every_code_on_the_data():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(8, 16), dim=-1)
    batch = (centres.repeat(40, 1) + 0.05 * torch.randn(320, 16))
    vq = VectorQuantizer(8, 16).train()
    _, idx, stats = vq(batch)
    assert stats["usage"].item() == 1.0  # random unit codes would leave most unused
    # Each code sits near one of the clusters.
    near = (vq.codes().detach() @ centres.t()).max(dim=1).values
    assert near.median() > 0.95 and near.min() > 0.5
    assert bool(vq.initialized)
    vq2 = VectorQuantizer(8, 16).eval()
    vq2(batch)
    assert not bool(vq2.initialized)  # evaluation never initialises


def test_old_checkpoints_without_the_init_flag_load_as_initialised():
    vq = VectorQuantizer(8, 4)
    state = {k: v for k, v in vq.state_dict().items() if k != "initialized"}
    fresh = VectorQuantizer(8, 4)
    fresh.load_state_dict(state)
    assert bool(fresh.initialized)


def test_pixel_codes_fit_the_clusters_and_assign_the_nearest():
    torch.manual_seed(0)
    centres = torch.rand(6, 12)
    patches = centres.repeat(50, 1) + 0.01 * torch.randn(300, 12)
    book = PatchCodebook(6, 12)
    with pytest.raises(RuntimeError, match="never fitted"):
        book.nearest(patches)
    with pytest.raises(ValueError, match="at least 6 patches of that size"):
        book.fit(patches[:4])
    book.fit(patches, generator=torch.Generator().manual_seed(0))
    # Each cluster gets its own code, at the cluster's mean.
    match = torch.cdist(centres, book.centroids).argmin(dim=1)
    assert sorted(match.tolist()) == list(range(6))
    torch.testing.assert_close(book.centroids[match], centres, atol=0.01, rtol=0)
    z = torch.rand(5, 7, 12)  # any leading shape, chunked or not
    expect = torch.cdist(z.reshape(-1, 12), book.centroids).argmin(dim=1).reshape(5, 7)
    assert torch.equal(book.nearest(z), expect) and torch.equal(book.nearest(z, chunk=3), expect)
    z_q, idx, stats = book(patches)
    assert torch.equal(z_q, book.lookup(idx)) and stats["loss"].item() == 0 and stats["usage"].item() == 1.0
    # The codes are data, not parameters: a checkpoint carries them and no optimizer moves them.
    assert not list(book.parameters())
    again = PatchCodebook(6, 12)
    again.load_state_dict(book.state_dict())
    assert torch.equal(again.nearest(z), expect)


def test_fsq_codes_round_trip_and_cover_every_index():
    fsq = FiniteScalarQuantizer([8, 5, 5, 5])
    assert fsq.num_codes == 1000 and fsq.dim == 4
    codes = fsq.codes()
    assert codes.shape == (1000, 4) and codes.abs().max() <= 1
    assert torch.equal(fsq.nearest(torch.atanh(codes.clamp(-0.99, 0.99)) * 0), fsq.nearest(torch.zeros(1000, 4)))
    # Every code is its own nearest: indices and vectors are one-to-one.
    scale = torch.tensor([4.0, 2, 2, 2])
    lv = torch.tensor([8.0, 5, 5, 5])
    half = (lv - 1) * (1 - 1e-3) / 2
    offset = torch.tensor([0.5, 0, 0, 0])
    z = torch.atanh(((codes * scale + offset) / half).clamp(-0.999, 0.999)) - torch.atanh(offset / half)
    assert torch.equal(fsq.nearest(z), torch.arange(1000))
    z_q, idx, stats = fsq(z)
    torch.testing.assert_close(z_q, codes)
    assert stats["usage"].item() == 1.0 and stats["loss"].item() == 0
    torch.testing.assert_close(stats["perplexity"], torch.tensor(1000.0), rtol=1e-4, atol=1e-3)


def test_fsq_gradient_is_straight_through():
    fsq = FiniteScalarQuantizer([5, 5])
    z = torch.randn(10, 2, requires_grad=True)
    z_q, _, _ = fsq(z)
    z_q.sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (fsq._bound(z2) / 2).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)


def test_fsq_rejects_bad_levels():
    with pytest.raises(ValueError, match=">= 2"):
        FiniteScalarQuantizer([8, 1])


def test_usage_and_perplexity():
    vq = VectorQuantizer(4, 4, dead_code_steps=0).eval()
    z = vq.codes().detach().repeat(5, 1)
    _, _, stats = vq(z)
    assert stats["usage"].item() == 1.0
    torch.testing.assert_close(stats["perplexity"], torch.tensor(4.0))
    _, _, stats = vq(z[:1].repeat(10, 1))
    assert stats["usage"].item() == 0.25
    torch.testing.assert_close(stats["perplexity"], torch.tensor(1.0))


def test_nearest_codes_ignore_bf16_autocast():
    # Trainers run under bf16 autocast; rounding the distances there picked another code for
    # about half of CoinRun's patches, so the codes searched in training were not inference's.
    g = torch.Generator().manual_seed(0)
    book = PatchCodebook(256, 48)
    book.fit(torch.rand(4096, 48, generator=g), generator=g)
    vq = VectorQuantizer(256, 16)
    vq.train()
    vq(torch.randn(1024, 16, generator=g))  # k-means initialised from data
    vq.eval()
    patches, z = torch.rand(2000, 48, generator=g), torch.randn(2000, 16, generator=g)
    want = book.nearest(patches), vq.nearest(z), vq(z)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = book.nearest(patches), vq.nearest(z), vq(z)[1]
        # the guard is what keeps them equal: plain bf16 matmuls choose differently
        rounded = (patches @ book.centroids.t() - 0.5 * book.centroids.square().sum(1)).argmax(1)
    assert not torch.equal(rounded, want[0])
    for a, b in zip(want, got):
        assert torch.equal(a, b)
