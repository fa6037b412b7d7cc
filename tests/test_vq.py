import torch
import torch.nn.functional as F

from genie_env.nn.vq import VectorQuantizer


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


def test_dead_codes_are_reseeded_from_the_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, dead_code_steps=3).train()
    # Every vector lies next to code 0, so codes 1..7 go unused.
    batch = vq.codes()[0].detach() + 0.01 * torch.randn(64, 4)
    for _ in range(2):
        _, idx, stats = vq(batch)
    assert stats["usage"].item() == 1 / 8
    old = vq.codes().detach().clone()
    vq(batch)  # third unused step: codes 1..7 are re-seeded
    new = vq.codes().detach()
    assert torch.equal(new[0], old[0])
    assert not torch.allclose(new[1:], old[1:])
    # Each re-seeded code is one of the batch's vectors.
    d = torch.cdist(new[1:], F.normalize(batch, dim=-1))
    assert d.min(dim=1).values.max() < 1e-3  # others lie >= 0.01 away
    assert vq.steps_unused.max() < 3


def test_usage_and_perplexity():
    vq = VectorQuantizer(4, 4, dead_code_steps=0).eval()
    z = vq.codes().detach().repeat(5, 1)
    _, _, stats = vq(z)
    assert stats["usage"].item() == 1.0
    torch.testing.assert_close(stats["perplexity"], torch.tensor(4.0))
    _, _, stats = vq(z[:1].repeat(10, 1))
    assert stats["usage"].item() == 0.25
    torch.testing.assert_close(stats["perplexity"], torch.tensor(1.0))
