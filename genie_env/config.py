"""Typed configs for the three Genie models and their training, mapped to and from YAML.

A stage's YAML file has up to four top-level keys::

    kind: tokenizer          # tokenizer | lam | dynamics
    model: {...}             # overrides of TokenizerConfig / LAMConfig / DynamicsConfig
    data:  {...}             # overrides of DataConfig
    train: {...}             # overrides of TrainConfig

Every dataclass default is the seed's size; YAML only overrides. An unknown key or a value of
the wrong type raises :class:`ConfigError` naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """A config file or dict that does not match the typed configs."""


@dataclass
class TokenizerConfig:
    """ST-ViViT VQ-VAE: causal ST encoder -> VQ -> causal ST decoder (Genie §2.1)."""

    image_size: tuple[int, int] = (64, 64)
    in_channels: int = 3
    patch_size: int = 4
    max_frames: int = 16
    num_codes: int = 1024
    code_dim: int = 32
    enc_layers: int = 6
    enc_dim: int = 384
    enc_heads: int = 6
    dec_layers: int = 10
    dec_dim: int = 512
    dec_heads: int = 8
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    commitment: float = 0.25
    dead_code_steps: int = 100
    kmeans_init: bool = True
    # "vq" (the paper's VQ-VAE) or "fsq" (Mentzer et al., 2023): num_codes must then equal
    # the product of fsq_levels, and code_dim is len(fsq_levels). "kmeans": no encoder; a
    # patch's token is the nearest of num_codes pixel patches that the trainer fits by k-means
    # on kmeans_frames training frames, and the decoder refines the code's patch from context
    # (code_dim and the enc_* sizes are then unused).
    quantizer: str = "vq"
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    kmeans_frames: int = 1024
    grad_checkpointing: bool = False

    def __post_init__(self):
        if self.quantizer not in ("vq", "fsq", "kmeans"):
            raise ConfigError(f"quantizer must be 'vq', 'fsq' or 'kmeans', got {self.quantizer!r}")
        if self.quantizer == "fsq":
            n = 1
            for v in self.fsq_levels:
                n *= v
            if n != self.num_codes:
                raise ConfigError(f"fsq_levels {list(self.fsq_levels)} make {n} codes but num_codes is "
                                  f"{self.num_codes}; set num_codes: {n}")

    @property
    def token_grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)


# The LAM motion head's classes for each LAMConfig.motion_axes (LatentActionModel.motion_classes).
MOTION_CLASSES = {"both": 9, "horizontal": 3, "jump": 6, "side_or_jump": 4}
# Those whose classes mark a jump's start, read against the transition before (need a history).
JUMP_AXES = ("jump", "side_or_jump")


@dataclass
class LAMConfig:
    """Latent action model on raw pixels with an 8-code action codebook (Genie §2.1)."""

    image_size: tuple[int, int] = (64, 64)
    in_channels: int = 3
    patch_size: int = 16
    max_frames: int = 16
    num_actions: int = 8
    action_dim: int = 32
    enc_layers: int = 8
    enc_dim: int = 512
    enc_heads: int = 8
    dec_layers: int = 8
    dec_dim: int = 512
    dec_heads: int = 8
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    commitment: float = 0.25
    dead_code_steps: int = 100
    kmeans_init: bool = True
    residual_decoder: bool = False
    # Weight of an auxiliary loss (0: off, the paper's LAM) that asks each quantised action which
    # way the whole scene moved between its two frames: the sign of the best global shift of
    # at most motion_max_shift pixels per axis, 3 x 3 classes, computed from the pixels (no
    # action labels). CoinRun's 8-code LAMs learned jumps and falls but not left from right
    # (a mirrored pair keeps its code 91% of the time), so no arrow key could scroll the world.
    motion_weight: float = 0.0
    motion_max_shift: int = 3
    # "both": the 3 x 3 classes above. "horizontal": the sideways sign alone (3 classes), for a
    # LAM with a history (max_frames > 2) whose decoder can carry falls on from the past: the
    # codes are then asked for the player's sideways input, not for the camera's vertical moves,
    # which random codes turned into a walk off the level (README, session 29).
    # "jump" (needs min_history >= 1): the sideways sign and whether a rise of the camera began
    # in this transition (6 classes). The session-30 history LAM asked for the sideways sign
    # alone kept 0.10 bits of the vertical motion and 0.15 of the true actions (the two-frame
    # LAM asked for both axes: 0.47): a jump's start is the player's input, its flight and fall
    # are physics the past predicts. "side_or_jump" (also needs min_history >= 1): a jump's start
    # whatever the sideways sign, else the sideways sign (4 classes): "jump" gave a jump two codes
    # (up, up-right), so uniform codes drew a jump a quarter of the time and lifted the camera off
    # the level (README, session 31).
    motion_axes: str = "both"
    # Transitions with fewer past frames than this get no reconstruction or motion loss, and a
    # long video is labelled in windows that give every transition after its first min_history
    # that many past frames. With 1 and max_frames > 2 the decoder always sees the motion
    # already under way, so a code need not name a fall the past predicts; 0 is the paper's LAM.
    min_history: int = 0
    grad_checkpointing: bool = False

    def __post_init__(self):
        if self.motion_axes not in MOTION_CLASSES:
            *rest, last = (repr(k) for k in MOTION_CLASSES)
            raise ConfigError(f"motion_axes must be {', '.join(rest)} or {last}, got {self.motion_axes!r}")
        if self.motion_axes in JUMP_AXES and self.min_history < 1:
            raise ConfigError(f"motion_axes {self.motion_axes!r} asks whether a rise began after the transition "
                              "before, so it needs a history: set min_history >= 1 (and max_frames >= 3), "
                              f"got {self.min_history}")
        if not self.motion_weight >= 0:
            raise ConfigError(f"motion_weight must be >= 0 (0: off), got {self.motion_weight}")
        if self.motion_max_shift < 1:
            raise ConfigError(f"motion_max_shift must be at least 1 pixel, got {self.motion_max_shift}")
        if self.min_history < 0 or self.max_frames < self.min_history + 2:
            raise ConfigError(f"min_history must be >= 0 and leave a trained transition in a window of "
                              f"max_frames: set max_frames >= {self.min_history + 2} (min_history + 2), "
                              f"got max_frames {self.max_frames}, min_history {self.min_history}")


def check_action_guidance(value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"action_guidance must be a finite number >= 0 (0: off), got {value!r}")


@dataclass
class DynamicsConfig:
    """MaskGIT dynamics over tokenizer tokens, conditioned on latent actions (Genie §2.1)."""

    token_grid: tuple[int, int] = (16, 16)
    vocab_size: int = 1024
    num_actions: int = 8
    max_frames: int = 16
    num_layers: int = 12
    d_model: int = 768
    num_heads: int = 12
    qk_dim: int = 128
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    mask_rate_min: float = 0.5
    mask_rate_max: float = 1.0
    # Share of training samples whose first frames are clean and only frames from a random cut
    # on are masked: the state every MaskGIT decode at inference starts from (1xgpt does this).
    clean_prefix_prob: float = 0.0
    maskgit_steps: int = 25
    temperature: float = 2.0
    # MaskGIT's annealed randomness in the commit order: Gumbel noise of this scale times
    # (1 - k/steps) is added to the log-confidence at pass k (0: commit by confidence alone).
    commit_noise: float = 0.0
    # Inference only: how many MaskGIT passes draw their tokens at `temperature`; the later
    # passes take each position's most probable code (None, or maskgit_steps or more: every pass
    # draws, the paper's sampler). With commit noise the first pass commits a few tokens at
    # random positions, drawn: they decide which way the frame goes (a scroll or not), and the
    # rest follow them at their most probable, instead of each drawing its own way and breaking
    # a scroll into stripes (docs/design.md).
    sampled_passes: Union[int, None] = None
    # Inference only: action guidance g. Each MaskGIT pass also runs the frame under a reference
    # action and samples from (1 + g) log p(x | action) - g log p(x | reference), which
    # strengthens what the chosen action changes over what any action would; 0 is off (the
    # paper's sampler), and g > 0 costs a second transformer pass per MaskGIT pass
    # (docs/design.md). The reference is the "no action" input when the model was trained with
    # action_dropout (classifier-free guidance), else the mean of the latent action embeddings.
    action_guidance: float = 0.0
    # Training only: the share of frames (after the first) whose action input is replaced by the
    # "no action" input, so that the model also learns the next frame without its action: the
    # reference of classifier-free action guidance (0: off, the paper's training).
    action_dropout: float = 0.0
    # Training only: the largest share of the visible (unmasked) tokens replaced by random codes.
    # Each sample draws its share uniformly from [0, context_noise]. At inference the past is the
    # model's own output and carries its errors, which the training never shows with a clean
    # past; a model that has learned to read past wrong tokens should drift less over a long
    # episode (the discrete form of the noise augmentation of GameNGen and DIAMOND; 0: off, the
    # paper's training; docs/design.md).
    context_noise: float = 0.0
    # Training only: the share of training steps whose past is the model's own rollout. Such a
    # step decodes frames 2..c of each clip from its first under the clip's latent actions with
    # the inference sampler (no gradient; c drawn per step), then trains on frames 2..T with
    # those generated frames as the visible past and the recorded frames c+1..T as the targets
    # (masked as usual). Frame 1 is left out, so, as in a long episode, no recorded frame is in
    # sight. Uniform random codes (context_noise) are not the errors a world makes; its own
    # rollouts are, and the recorded continuation shows it how to come back from them (scheduled
    # sampling; 0: off, the paper's training; docs/design.md).
    rollout_prob: float = 0.0
    # Cross-entropy weight of the masked tokens that differ from the same position's token in the
    # frame before (1: the paper's plain mean). Most tokens copy the frame before, so a plain
    # mean teaches copying; a weight above 1 pays more for the tokens that move (docs/design.md).
    changed_token_weight: float = 1.0
    # Length of each code's pixel patch (patch^2 x channels of the tokenizer; 0: off, the paper's
    # plain embeddings). When set, the model adds a projection of each code's mean pixel patch
    # (filled in from data by the trainer, kept in the checkpoint) to the token embeddings and
    # adds to each code's logit the dot product of a patch it predicts with the code's patch, so
    # that a shift of the scene by less than a patch is a smooth function of neighbouring tokens
    # rather than a lookup of 1024 x 1024 code pairs (docs/design.md).
    token_pixels: int = 0
    reward_head: bool = False
    # The reward head learns reward / reward_scale (CoinRun pays 10 for the coin) and
    # predicts in the data's units.
    reward_scale: float = 1.0
    # Training only: the share of clips mirrored left-right (frames flipped before they are
    # tokenized) with the two latent actions of mirror_actions (the key map's left and right)
    # trading places. The candidates' LAM gives a mirrored CoinRun pair the same code 91% of the
    # time, so mirroring with its own labels would teach no direction. Measured once (candidate
    # 10, docs/design.md): it evened out the two directions one step from the real past but did
    # not make the held arrow keys scroll. Needs a frozen LAM.
    hflip_prob: float = 0.0
    mirror_actions: Union[tuple[int, int], None] = None
    grad_checkpointing: bool = False

    def __post_init__(self):
        check_action_guidance(self.action_guidance)
        if self.sampled_passes is not None and self.sampled_passes < 1:
            raise ConfigError(f"sampled_passes must be >= 1 (null: every MaskGIT pass samples), got {self.sampled_passes}")
        if not self.changed_token_weight > 0:
            raise ConfigError(f"changed_token_weight must be > 0 (1 is the plain mean), got {self.changed_token_weight}")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ConfigError(f"hflip_prob must be in [0, 1], got {self.hflip_prob}")
        if not 0.0 <= self.action_dropout < 1.0:
            raise ConfigError(f"action_dropout must be in [0, 1) (0: off; 0.1 is usual for "
                              f"classifier-free guidance), got {self.action_dropout}")
        if not 0.0 <= self.context_noise < 1.0:
            raise ConfigError(f"context_noise must be in [0, 1) (0: off), got {self.context_noise}")
        if not 0.0 <= self.rollout_prob <= 1.0:
            raise ConfigError(f"rollout_prob must be in [0, 1] (0: off), got {self.rollout_prob}")
        if self.mirror_actions is not None:
            a, b = self.mirror_actions
            if a == b or not (0 <= a < self.num_actions and 0 <= b < self.num_actions):
                raise ConfigError(f"mirror_actions must be two different actions in [0, {self.num_actions}), "
                                  f"e.g. the action map's left and right, got {list(self.mirror_actions)}")


@dataclass
class DataConfig:
    """How clips are cut from the H5 episodes."""

    clip_len: int = 16
    val_fraction: float = 0.1
    num_workers: int = 2
    seed: int = 0


@dataclass
class TrainConfig:
    """Optimiser and loop settings shared by the three trainers."""

    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 1000
    max_steps: int = 30000
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    bf16: bool = True
    compile: bool = False
    log_every: int = 50
    eval_every: int = 1000
    save_every: int = 1000
    image_every: int = 1000
    val_batches: int = 8
    seed: int = 0
    out_dir: str = "checkpoints"
    # Minutes of wall clock for the run, or None: the loop measures its step rate and lowers
    # max_steps to what fits (so the cosine decay ends on time), then saves and stops at the
    # deadline if it still runs. For a rented GPU whose rate is unknown beforehand.
    time_limit_min: float | None = None
    # A checkpoint of the same model kind and architecture whose weights a new run starts from
    # (fine-tuning: fresh optimizer and schedule, step 0). Ignored when the run resumes.
    init_from: str | None = None


MODEL_CONFIGS: dict[str, type] = {
    "tokenizer": TokenizerConfig,
    "lam": LAMConfig,
    "dynamics": DynamicsConfig,
}


@dataclass
class StageConfig:
    """One training stage: which model, its sizes, the data and the loop."""

    kind: str
    model: Any
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": config_to_dict(self.model),
                "data": config_to_dict(self.data), "train": config_to_dict(self.train)}


def config_to_dict(cfg: Any) -> dict:
    """A plain dict of a config dataclass (tuples become lists, as in YAML)."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return {k: plain(v) for k, v in asdict(cfg).items()}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple and typing.get_args(tp)[-1] is Ellipsis:
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{where}: expected a non-empty list, got {value!r}")
        return tuple(_coerce(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            if isinstance(value, int) and not isinstance(value, bool) and len(args) == 2 and args[0] is int:
                return (value, value)  # a square image size given as one number
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def config_from_dict(cls: type, values: dict | None, where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys and wrong types."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {names}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def stage_from_dict(d: dict, where: str = "config") -> StageConfig:
    """Build a :class:`StageConfig` from a dict shaped like the YAML files."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping with keys kind/model/data/train")
    unknown = sorted(set(d) - {"kind", "model", "data", "train"})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {unknown}; valid: kind, model, data, train")
    kind = d.get("kind")
    if kind not in MODEL_CONFIGS:
        raise ConfigError(f"{where}: 'kind' must be one of {sorted(MODEL_CONFIGS)}, got {kind!r}")
    return StageConfig(
        kind=kind,
        model=config_from_dict(MODEL_CONFIGS[kind], d.get("model"), f"{where}: model"),
        data=config_from_dict(DataConfig, d.get("data"), f"{where}: data"),
        train=config_from_dict(TrainConfig, d.get("train"), f"{where}: train"),
    )


def load_config(path: str | Path) -> StageConfig:
    """Read a stage's YAML file into typed configs; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        d = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file, so not a stage YAML (a checkpoint? its config is inside it: "
                          "load it with genie_env.load_model)") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    return stage_from_dict(d, where=str(path))


def save_config(cfg: StageConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
