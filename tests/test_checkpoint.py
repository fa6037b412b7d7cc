import os
import random

import numpy as np
import pytest
import torch

from genie_env.checkpoint import (CheckpointError, load_checkpoint, load_model, save_checkpoint,
                                  set_rng_state)
from genie_env.config import StageConfig
from genie_env.models import DynamicsModel, VideoTokenizer
from tests.tiny import dynamics_cfg, moving_square, tokenizer_cfg


def _tokenizer_ckpt(path, step=7, **kw):
    torch.manual_seed(0)
    model = VideoTokenizer(tokenizer_cfg())
    save_checkpoint(path, model, StageConfig("tokenizer", model.cfg), step=step, **kw)
    return model


def test_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path):
    path = tmp_path / "tok.pt"
    model = _tokenizer_ckpt(path).eval()
    loaded = load_model(path)
    assert isinstance(loaded, VideoTokenizer) and not loaded.training
    assert loaded.cfg == model.cfg
    video, _ = moving_square(1, 3)
    assert torch.equal(loaded.encode(video), model.encode(video))
    assert load_checkpoint(path)["step"] == 7


def test_training_state_round_trips(tmp_path):
    model = DynamicsModel(dynamics_cfg())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    out = model(torch.randint(0, 16, (2, 3, 4)), torch.randint(0, 4, (2, 2)))
    out["loss"].backward()
    opt.step()
    sched.step()
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(9)
    path = tmp_path / "dyn.pt"
    save_checkpoint(path, model, StageConfig("dynamics", model.cfg), step=1, optimizer=opt,
                    scheduler=sched, extra={"epoch": 2})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    ckpt = load_checkpoint(path, kind="dynamics")
    set_rng_state(ckpt["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == 1
    assert ckpt["scheduler"]["last_epoch"] == 1 and ckpt["extra"] == {"epoch": 2}


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint not found"):
        load_model(tmp_path / "nope.pt")


def test_wrong_kind_is_refused(tmp_path):
    path = tmp_path / "tok.pt"
    _tokenizer_ckpt(path)
    with pytest.raises(CheckpointError, match="holds a tokenizer model, but a dynamics checkpoint"):
        load_model(path, kind="dynamics")


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "tok.pt"
    _tokenizer_ckpt(path)
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable genie-env checkpoint"):
        load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a genie-env checkpoint"):
        load_model(foreign)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_loading_never_runs_arbitrary_pickle(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "genie-env/1", "kind": "tokenizer", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable genie-env checkpoint"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_stored_config(tmp_path):
    path = tmp_path / "tok.pt"
    _tokenizer_ckpt(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["model"]["enc_dim"] = 48
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="weights do not fit a tokenizer"):
        load_model(path)


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "tok.pt"
    _tokenizer_ckpt(path, step=1)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _tokenizer_ckpt(path, step=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.pt"]  # no temp file left
