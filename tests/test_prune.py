"""Pruning a world's codebook to the codes its training frames use (genie_env.prune)."""
import pytest
import torch

from genie_env.models import DynamicsModel, VideoTokenizer
from genie_env.models.tokenizer import patchify
from genie_env.prune import code_counts, most_used, prune_dynamics, prune_tokenizer, prune_world
from tests.tiny import dynamics_cfg, tokenizer_cfg


def _kmeans_world(clips, codes=48):
    """A k-means tokenizer (8x8 patches of 64x64 frames) fitted on ``clips`` and a dynamics model that
    sees each code's pixels, both with random weights."""
    torch.manual_seed(0)
    tok = VideoTokenizer(tokenizer_cfg(image_size=(64, 64), patch_size=8, max_frames=8, num_codes=codes,
                                       quantizer="kmeans"))
    tok.vq.fit(patchify(clips, 8).flatten(0, 2), generator=torch.Generator().manual_seed(0))
    dyn = DynamicsModel(dynamics_cfg(token_grid=(8, 8), vocab_size=codes, max_frames=8, token_pixels=192))
    dyn.set_code_pixels(torch.rand(codes, 192))
    return tok.eval(), dyn.eval()


def _logits(dyn, tokens, actions, mask):
    h = dyn.transformer(dyn.embed(tokens.masked_fill(mask, dyn.mask_id), dyn._frame_actions(actions)))
    return dyn.logits(h)


def test_most_used_keeps_the_most_counted_codes_in_their_order():
    counts = torch.tensor([5, 0, 9, 5, 1, 7])
    assert most_used(counts, 3).tolist() == [0, 2, 5]
    assert most_used(counts, 4).tolist() == [0, 2, 3, 5]  # the tie at 5 goes to both once there is room
    assert most_used(torch.tensor([2, 2, 2]), 1).tolist() == [0]  # ties: the lower index
    for bad in (0, 7):
        with pytest.raises(ValueError, match="--prune_codes must be between 1 and the codebook's 6 codes"):
            most_used(counts, bad)


def test_pruned_world_is_the_same_model_over_the_kept_codes(coinrun_clips):
    tok, dyn = _kmeans_world(coinrun_clips)
    tokens = tok.encode(coinrun_clips)
    counts = torch.bincount(tokens.flatten(), minlength=48)
    new_tok, new_dyn, summary = prune_world(tok, dyn, counts, 32)
    kept = most_used(counts, 32)
    assert new_tok.cfg.num_codes == new_dyn.cfg.vocab_size == 32 and new_dyn.mask_id == 32
    assert summary["codes before"] == 48 and summary["codes kept"] == 32
    dropped_share = 1 - counts[kept].sum().item() / counts.sum().item()
    assert 0 < dropped_share < 0.5 and summary["counted patches whose code was dropped (fraction)"] == \
        pytest.approx(dropped_share)

    # The tokenizer: each patch's token is now its nearest kept code, numbered in the kept order,
    # and decodes to what the old tokenizer decoded from that code.
    new_tokens = new_tok.encode(coinrun_clips)
    patches = patchify(coinrun_clips, 8)
    assert torch.equal(new_tokens, torch.cdist(patches, tok.vq.centroids[kept]).argmin(-1))
    on_kept = torch.isin(tokens, kept)
    assert on_kept.float().mean() > 0.5 and torch.equal(kept[new_tokens][on_kept], tokens[on_kept])
    torch.testing.assert_close(new_tok.decode(new_tokens), tok.decode(kept[new_tokens]))

    # The dynamics model: the same logits over the kept codes from the same (kept) context.
    context = kept[new_tokens]
    actions = torch.randint(0, 4, (context.shape[0], context.shape[1] - 1), generator=torch.Generator().manual_seed(0))
    mask = torch.rand(context.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    mask[:, 0] = False
    old = _logits(dyn, context, actions, mask)
    new = _logits(new_dyn, new_tokens, actions, mask)
    torch.testing.assert_close(new, old[..., kept], atol=1e-5, rtol=1e-5)


def test_pruning_a_vq_tokenizer_keeps_its_code_vectors_and_fsq_is_refused(coinrun_clips):
    torch.manual_seed(0)
    tok = VideoTokenizer(tokenizer_cfg(num_codes=32)).eval()
    keep = torch.tensor([1, 4, 5, 30])
    new = prune_tokenizer(tok, keep)
    assert new.cfg.num_codes == 4
    torch.testing.assert_close(new.vq.codes(), tok.vq.codes()[keep])
    video = torch.rand(2, 3, 3, 16, 16)
    assert torch.equal(new.encode(video), (tok._codes(video) @ tok.vq.codes()[keep].t()).argmax(-1))
    fsq = VideoTokenizer(tokenizer_cfg(quantizer="fsq", fsq_levels=[4, 4], num_codes=16))
    with pytest.raises(ValueError, match="FSQ tokenizer's codes are a fixed grid"):
        prune_tokenizer(fsq, keep)
    with pytest.raises(ValueError, match="the tokenizer has 32 codes but the dynamics vocab_size is 16"):
        prune_world(tok, DynamicsModel(dynamics_cfg()), torch.ones(32), 8)


def test_code_counts_reads_the_training_episodes(coinrun_dir, coinrun_clips):
    from genie_env.config import DataConfig
    from genie_env.data.h5 import ClipDataset
    tok, _ = _kmeans_world(coinrun_clips)
    counts = code_counts(tok, coinrun_dir, DataConfig(), frames=40)
    assert counts.sum().item() == 40 * 64  # 40 frames of 8x8 tokens
    train = ClipDataset(coinrun_dir, clip_len=1, split="train")
    first = tok.encode(train[0]["frames"][None])
    assert (counts[first.flatten()] > 0).all()  # the first training frame is among those counted


def test_prune_command_cuts_a_tokenizer_file_to_its_most_used_codes(coinrun_dir, coinrun_clips, tmp_path):
    from genie_env.checkpoint import load_checkpoint, load_model, save_checkpoint
    from genie_env.cli import main as cli
    from genie_env.config import DataConfig, StageConfig
    tok, _ = _kmeans_world(coinrun_clips)
    src, out = tmp_path / "tok.pt", tmp_path / "pruned" / "tok480.pt"
    save_checkpoint(src, tok, StageConfig("tokenizer", tok.cfg), step=7)
    counts = code_counts(tok, coinrun_dir, DataConfig(), frames=40)
    assert (counts == 0).any()  # some codes the counted frames never use, so the choice matters
    assert cli(["prune", "--tokenizer_path", str(src), "--data_dir", str(coinrun_dir), "--keep", "20",
                "--out", str(out), "--frames", "40"]) == 0
    pruned = load_model(out, "tokenizer")
    kept = most_used(counts, 20)
    assert pruned.cfg.num_codes == 20 and torch.equal(pruned.vq.centroids, tok.vq.centroids[kept])
    ckpt = load_checkpoint(out)
    assert ckpt["step"] == 7 and ckpt["extra"]["pruned"]["codes kept"] == 20
    assert 0 < ckpt["extra"]["pruned"]["counted patches whose code was dropped (fraction)"] < 1
    # Every patch now takes the nearest kept code.
    patches = patchify(coinrun_clips[:1], 8).flatten(0, 2)
    nearest = torch.cdist(patches, pruned.vq.centroids).argmin(1)
    assert torch.equal(pruned.encode(coinrun_clips[:1]).flatten(), nearest)
    # Refused by name, nothing written: too many codes, or the input file as the output.
    for argv, message in ((["--keep", "49", "--out", str(tmp_path / "x.pt")], "between 1 and the codebook's 48"),
                          (["--keep", "20", "--out", str(src)], "is --tokenizer_path")):
        assert cli(["prune", "--tokenizer_path", str(src), "--data_dir", str(coinrun_dir), *argv]) == 2
    assert not (tmp_path / "x.pt").exists() and load_model(src, "tokenizer").cfg.num_codes == 48
