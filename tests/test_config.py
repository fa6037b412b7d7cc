from pathlib import Path

import pytest

from genie_env.config import (ConfigError, DynamicsConfig, LAMConfig, TokenizerConfig, load_config,
                              save_config)
from genie_env.models import build_model
from genie_env.nn.st_transformer import count_parameters

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("kind", ["tokenizer", "lam", "dynamics"])
def test_shipped_configs_load_and_tiny_presets_build(kind):
    seed = load_config(CONFIGS / f"{kind}_config.yaml")
    assert seed.kind == kind
    # The seed YAML spells out the dataclass defaults, which are the seed's sizes.
    assert seed.model == {"tokenizer": TokenizerConfig, "lam": LAMConfig, "dynamics": DynamicsConfig}[kind]()
    tiny = load_config(CONFIGS / "tiny" / f"{kind}_config.yaml")
    assert count_parameters(build_model(kind, tiny.model)) < 2_000_000


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads(path):
    assert load_config(path).kind in ("tokenizer", "lam", "dynamics")


def test_quantizer_choices_are_named(tmp_path):
    assert TokenizerConfig(quantizer="kmeans").quantizer == "kmeans"
    with pytest.raises(ConfigError, match="quantizer must be 'vq', 'fsq' or 'kmeans', got 'pq'"):
        TokenizerConfig(quantizer="pq")


def test_lam_motion_loss_settings_are_checked():
    assert LAMConfig().motion_weight == 0.0  # the paper's LAM
    with pytest.raises(ConfigError, match="motion_weight must be >= 0"):
        LAMConfig(motion_weight=-0.1)
    with pytest.raises(ConfigError, match="motion_max_shift must be at least 1 pixel"):
        LAMConfig(motion_max_shift=0)
    assert LAMConfig().motion_axes == "both"
    with pytest.raises(ConfigError, match="motion_axes must be 'both', 'horizontal', 'jump' or 'side_or_jump'"):
        LAMConfig(motion_axes="vertical")
    for axes in ("jump", "side_or_jump"):
        with pytest.raises(ConfigError, match=f"'{axes}' .* needs a history: set min_history >= 1"):
            LAMConfig(motion_axes=axes, max_frames=4)
        assert LAMConfig(motion_axes=axes, max_frames=4, min_history=1).motion_axes == axes


def test_seed_sizes_match_the_issue():
    tok, lam, dyn = TokenizerConfig(), LAMConfig(), DynamicsConfig()
    assert (tok.patch_size, tok.num_codes, tok.code_dim, tok.enc_layers, tok.enc_dim, tok.dec_layers,
            tok.dec_dim) == (4, 1024, 32, 6, 384, 10, 512)
    assert (lam.patch_size, lam.num_actions, lam.action_dim, lam.enc_layers, lam.enc_dim) == (16, 8, 32, 8, 512)
    assert (dyn.num_layers, dyn.d_model, dyn.num_heads, dyn.qk_dim, dyn.vocab_size, dyn.maskgit_steps,
            dyn.temperature) == (12, 768, 12, 128, 1024, 25, 2.0)


def test_a_binary_file_is_refused_as_a_config(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"\x80\x02binary")
    with pytest.raises(ConfigError, match=r"model.pt: not a text file, so not a stage YAML"):
        load_config(p)


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("kind: tokenizer\nmodel:\n  patch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"c.yaml: model: unknown key\(s\) \['patch_sise'\]"):
        load_config(p)


def test_wrong_type_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("kind: dynamics\ntrain:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"train.batch_size: expected an integer, got 'lots'"):
        load_config(p)
    p.write_text("kind: lam\nmodel:\n  image_size: [64, 64, 3]\n")
    with pytest.raises(ConfigError, match=r"model.image_size: expected 2 values"):
        load_config(p)
    p.write_text("kind: world\n")
    with pytest.raises(ConfigError, match="'kind' must be one of"):
        load_config(p)


def test_yaml_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "tiny" / "dynamics_config.yaml")
    save_config(cfg, tmp_path / "d.yaml")
    again = load_config(tmp_path / "d.yaml")
    assert again == cfg and again.model.token_grid == (8, 8)
    square = tmp_path / "s.yaml"
    square.write_text("kind: tokenizer\nmodel:\n  image_size: 32\n  patch_size: 8\n")
    assert load_config(square).model.image_size == (32, 32)
