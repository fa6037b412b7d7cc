"""The one training loop behind the three stages (tokenizer, LAM, dynamics).

A stage hands the loop a :class:`Task`: its model, a loss on a batch, a validation metric and an
image to log. The loop owns everything else, once: AdamW with warmup + cosine decay, gradient
clipping, bf16 autocast on CUDA, DistributedDataParallel under ``torchrun`` (NCCL on GPUs, gloo
on CPUs), a resumable data order, atomic checkpoints every ``save_every`` steps plus
``latest.pt``, a tqdm bar, TensorBoard scalars and images, and a stop on a non-finite loss.

Resume is exact: the checkpoint holds the step, optimizer, scheduler and RNG states, and the
data order is a pure function of (seed, step), so a run continued from ``latest.pt`` takes the
same batches and random draws as one that never stopped.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torch.utils.tensorboard import SummaryWriter

from genie_env.cli import reporting_errors
from genie_env.checkpoint import atomic_copy, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from genie_env.config import StageConfig, load_config
from genie_env.data.h5 import ClipDataset
from genie_env.device import resolve_device
from genie_env.nn.vq import restore_reseeded_codes
from genie_env.progress import progress

log = logging.getLogger("genie_env.train")


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must act on (e.g. a non-finite loss)."""


@dataclass
class Task:
    """What one stage plugs into :func:`train`.

    ``loss(module, batch)`` runs the (possibly DDP-wrapped) module and returns a dict with a
    scalar ``loss`` plus any scalars to log; ``validate(model, batch)`` returns float metrics on a
    held-out batch; ``visualize(model, batch)`` returns images (N, 3, H, W) in [0, 1].
    ``checkpoint_model`` is what the checkpoint's weights hold (default ``model``);
    ``extra_state``/``load_extra_state`` let a stage that trains two models (LAM + dynamics
    co-training) keep the second one in the checkpoint's ``extra``. ``frozen`` lists models the
    loss runs but does not train (the dynamics stage's tokenizer and LAM); the loop moves them
    to the training device with the model.
    """

    config: StageConfig
    model: nn.Module
    loss: Callable[[nn.Module, dict], dict]
    validate: Callable[[nn.Module, dict], dict[str, float]]
    visualize: Callable[[nn.Module, dict], torch.Tensor] | None = None
    checkpoint_model: nn.Module | None = None
    extra_state: Callable[[], dict] = field(default=lambda: {})
    load_extra_state: Callable[[dict], None] = field(default=lambda extra: None)
    frozen: tuple[nn.Module, ...] = ()  # models the loss uses but does not train: moved to the device too

    @property
    def kind(self) -> str:
        return self.config.kind


class StepBatchSampler(Sampler[list[int]]):
    """Batches for steps ``start_step+1 .. max_steps``: a fresh permutation of the dataset per
    epoch, seeded by (seed, epoch), cut into global batches, each rank taking its slice. The
    order depends on the step alone, so resuming at step k continues the same sequence."""

    def __init__(self, num_samples: int, global_batch: int, rank: int, world: int, seed: int,
                 start_step: int, max_steps: int):
        self.n, self.batch, self.rank, self.world = num_samples, global_batch, rank, world
        self.seed, self.start, self.stop = seed, start_step, max_steps
        self.local = global_batch // world

    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        pos = self.start * self.batch
        epoch, offset = divmod(pos, self.n)
        perm = self._perm(epoch)
        for _ in range(self.start, self.stop):
            batch = []
            while len(batch) < self.batch:
                if offset == self.n:
                    epoch, offset = epoch + 1, 0
                    perm = self._perm(epoch)
                take = min(self.batch - len(batch), self.n - offset)
                batch += perm[offset:offset + take]
                offset += take
            yield batch[self.rank * self.local:(self.rank + 1) * self.local]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def lr_lambda(warmup: int, max_steps: int | Callable[[], int], min_ratio: float) -> Callable[[int], float]:
    """Linear warmup to the peak, then cosine decay to ``min_ratio`` of it at ``max_steps`` (a
    number, or a function giving the current horizon when a time limit may move it)."""
    horizon = max_steps if callable(max_steps) else (lambda: max_steps)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, horizon() - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


class TimeBudget:
    """Fits a run's step count to ``minutes`` of wall clock (``train.time_limit_min``).

    At 10%, 40% and 70% of the budget it measures the steps/s since the first step finished
    and sets the horizon to the steps that fit, capped at the configured ``max_steps``, so the
    cosine decay ends when the time does; :meth:`expired` stops a run that still overshoots.
    A rented GPU's step rate is unknown until it runs; this spends its minutes, no more.
    """

    CHECKS = (0.1, 0.4, 0.7)
    MARGIN = 0.95  # of the remaining time, for validation and checkpoint writes

    def __init__(self, minutes: float, max_steps: int, clock: Callable[[], float] | None = None):
        if minutes <= 0:
            raise TrainingError(f"train.time_limit_min must be positive, got {minutes}")
        self.budget, self.max_steps, self.clock = minutes * 60.0, max_steps, clock or time.perf_counter
        self.horizon = max_steps
        self.start = self.clock()
        self.first: tuple[int, float] | None = None  # (step, time) once a step has finished
        self.next_check = 0

    def after_step(self, step: int) -> int:
        """Record that ``step`` finished; returns the (possibly new) horizon."""
        now = self.clock()
        if self.first is None:
            self.first = (step, now)  # the first step pays for warm-up: rate from here on
            return self.horizon
        elapsed = now - self.start
        if self.next_check < len(self.CHECKS) and elapsed >= self.CHECKS[self.next_check] * self.budget:
            self.next_check += 1
            rate = (step - self.first[0]) / max(now - self.first[1], 1e-9)
            fit = step + int(rate * (self.budget - elapsed) * self.MARGIN)
            self.horizon = max(step + 1, min(self.max_steps, fit))
        return self.horizon

    def expired(self) -> bool:
        return self.clock() - self.start >= self.budget


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    # Weight decay on matrices only: norms, biases, embeddings of positions stay undecayed.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_arg: str) -> tuple[DistContext, torch.device]:
    """Join the process group when started by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistContext(), resolve_device(device_arg)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_arg)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local), device


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise TrainingError(f"cannot write checkpoints to {run_dir} ({e.strerror}); "
                            f"pass a writable --out_dir") from e


def peak_memory_gib(dev: torch.device) -> float:
    """Peak memory so far: CUDA's max allocated on a GPU, the process's max RSS on the CPU."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    try:
        import resource
    except ImportError:  # Windows has no getrusage
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def _scalars(out: dict) -> dict[str, float]:
    return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in out.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1 or isinstance(v, (int, float))}


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def build_datasets(cfg: StageConfig, data_dir: str | Path, image_size) -> tuple[ClipDataset, ClipDataset]:
    d = cfg.data
    kw = dict(clip_len=d.clip_len, image_size=image_size, val_fraction=d.val_fraction, seed=d.seed)
    return ClipDataset(data_dir, split="train", **kw), ClipDataset(data_dir, split="val", **kw)


def spread_clips(dataset, count: int) -> list[torch.Tensor]:
    """The frames (T, C, H, W) of ``count`` clips spread evenly over ``dataset`` (the same ones on
    every rank and resume)."""
    n = len(dataset)
    return [dataset[i * n // min(count, n)]["frames"] for i in range(min(count, n))]


def init_weights_from(model: nn.Module, path: str | Path, kind: str) -> None:
    """Load a trained checkpoint's weights into ``model`` (a fine-tune's start), refusing one of
    another kind or architecture with the fix named."""
    ckpt = load_checkpoint(path, kind=kind, map_location="cpu")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise TrainingError(f"train.init_from {path}: its weights do not fit the {kind} this config builds "
                            f"({str(e).splitlines()[0]}); give the config the checkpoint's model "
                            f"section (the model keys stored in it) or start without init_from") from e


def train(task: Task, data_dir: str | Path, device: str = "auto", out_dir: str | Path | None = None,
          resume: bool | None = None, image_size=None) -> Path:
    """Train ``task`` on the H5 clips in ``data_dir``; returns the path of the last checkpoint.

    ``resume``: None continues from ``<out_dir>/<kind>/latest.pt`` when it exists, True demands
    it, False starts afresh (and refuses to overwrite an existing run).
    """
    cfg, tc = task.config, task.config.train
    ctx, dev = init_distributed(device)
    if tc.batch_size % ctx.world:
        raise TrainingError(f"batch_size {tc.batch_size} is not divisible by the {ctx.world} processes")
    run_dir = Path(out_dir or tc.out_dir) / task.kind
    check_writable(run_dir)
    train_ds, val_ds = build_datasets(cfg, data_dir, image_size or cfg.model.image_size)
    latest = run_dir / "latest.pt"
    if resume is True and not latest.exists():
        raise TrainingError(f"--resume was given but {latest} does not exist")
    if resume is False and latest.exists():
        raise TrainingError(f"{run_dir} already holds a run ({latest.name}); resume it, or pick "
                            f"another --out_dir")

    torch.manual_seed(tc.seed + ctx.rank)
    model = task.model.to(dev)
    for helper in task.frozen:
        helper.to(dev)
    ckpt_model = task.checkpoint_model or model
    opt = make_optimizer(model, tc)
    # Read at every step: a time limit may lower max_steps once the step rate is known.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.warmup_steps, lambda: tc.max_steps, tc.min_lr_ratio))
    step = 0
    if latest.exists() and resume is not False:
        # On the CPU: RNG states must stay there; load_state_dict moves the rest to the model.
        ckpt = load_checkpoint(latest, kind=task.kind, map_location="cpu")
        ckpt_model.load_state_dict(ckpt["model"])
        task.load_extra_state(ckpt.get("extra", {}))
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step = ckpt["step"]
        rank_rng = ckpt.get("extra", {}).get("rank_rng")
        if ctx.world == 1 and ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        elif rank_rng and len(rank_rng) == ctx.world:
            set_rng_state(rank_rng[ctx.rank])
        elif ctx.main:
            log.warning("resuming on %d processes a run saved on %d: the data order continues, "
                        "but the random draws are not those of an uninterrupted run",
                        ctx.world, ckpt.get("extra", {}).get("world_size", 1))
        if ctx.main:
            log.info("resuming %s from %s at step %d", task.kind, latest, step)
    elif tc.init_from:
        init_weights_from(ckpt_model, tc.init_from, task.kind)
        if ctx.main:
            log.info("starting %s from the weights of %s", task.kind, tc.init_from)
    if step >= tc.max_steps:
        if ctx.main:
            log.info("%s already trained to step %d (max_steps %d)", task.kind, step, tc.max_steps)
        return latest

    module: nn.Module = model
    if ctx.world > 1:
        module = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if tc.compile:
        module = torch.compile(module)
    sampler = StepBatchSampler(len(train_ds), tc.batch_size, ctx.rank, ctx.world, cfg.data.seed, step, tc.max_steps)
    workers = cfg.data.num_workers
    loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=workers, pin_memory=dev.type == "cuda",
                        persistent_workers=False, generator=torch.Generator().manual_seed(tc.seed))
    val_loader = DataLoader(val_ds, batch_size=max(1, tc.batch_size // ctx.world), shuffle=False, num_workers=0)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=tc.bf16 and dev.type == "cuda")

    writer = None
    if ctx.main:
        writer = SummaryWriter(str(run_dir / "tb"))
    bar = progress(total=tc.max_steps, initial=step, disable=not ctx.main, desc=f"train {task.kind}",
               dynamic_ncols=True)
    frames_per_step = tc.batch_size * cfg.data.clip_len
    last_path = latest
    rates: list[float] = []  # frames/s of each step run here, for the summary at the end
    budget = TimeBudget(tc.time_limit_min, tc.max_steps) if tc.time_limit_min is not None else None
    t0 = time.perf_counter()
    model.train()
    try:
        for batch in loader:
            step += 1
            batch = _to_device(batch, dev)
            with autocast:
                out = task.loss(module, batch)
            loss = out["loss"]
            finite = torch.isfinite(loss.detach()).float()
            if ctx.world > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                raise TrainingError(f"{task.kind}: loss became {loss.item()} at step {step}; stopped. "
                                    f"The last good checkpoint is {latest if latest.exists() else 'none yet'}. "
                                    f"Lower lr or check the data.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            restore_reseeded_codes(model, opt)
            sched.step()
            if budget is not None:
                fit, expired = budget.after_step(step), budget.expired()
                if ctx.world > 1:  # every rank must stop at the same step
                    agree = torch.tensor([-float(fit), float(expired)], device=dev)
                    dist.all_reduce(agree, op=dist.ReduceOp.MAX)
                    fit, expired = int(-agree[0].item()), bool(agree[1].item())
                fit = step if expired else max(fit, step)
                if fit != tc.max_steps:
                    if ctx.main:
                        log.info("%s: time limit %.1f min: %s at step %d", task.kind, tc.time_limit_min,
                                 "spent, stopping" if expired else f"max_steps {tc.max_steps} -> {fit}", step)
                    tc.max_steps = fit  # the checkpoints' config records the steps the run got
                    bar.total = tc.max_steps

            if ctx.main:
                now = time.perf_counter()
                fps = frames_per_step / max(now - t0, 1e-9)
                rates.append(fps)
                t0 = now
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", fps=f"{fps:.0f}", refresh=False)
                if step % tc.log_every == 0 or step == tc.max_steps:
                    scalars = _scalars(out)
                    scalars.update(lr=sched.get_last_lr()[0], grad_norm=float(grad_norm), frames_per_s=fps,
                                   peak_memory_GiB=peak_memory_gib(dev))
                    for k, v in scalars.items():
                        writer.add_scalar(f"train/{k}", v, step)
                if step % tc.eval_every == 0 or step == tc.max_steps:
                    metrics = validate(task, model, val_loader, dev, autocast, tc.val_batches)
                    for k, v in metrics.items():
                        writer.add_scalar(f"val/{k}", v, step)
                    log.info("%s step %d: %s", task.kind, step,
                             ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                if task.visualize is not None and (step % tc.image_every == 0 or step == tc.max_steps):
                    model.eval()
                    with torch.no_grad(), autocast:
                        images = task.visualize(model, _to_device(next(iter(val_loader)), dev))
                    model.train()
                    writer.add_images(f"{task.kind}/samples", images.float().clamp(0, 1).cpu(), step)
            if step % tc.save_every == 0 or step == tc.max_steps:
                last_path = _save(task, ckpt_model, opt, sched, step, run_dir, ctx)
            if step >= tc.max_steps:
                break
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if ctx.main and rates:
        # The median skips the first steps' warm-up and the steps that ran validation or saving.
        log.info("%s throughput: median %.1f frames/s over %d steps (batch %d x %d frames), "
                 "peak memory %.2f GiB", task.kind, sorted(rates)[len(rates) // 2], len(rates),
                 tc.batch_size, cfg.data.clip_len, peak_memory_gib(dev))
    return last_path


@torch.no_grad()
def validate(task: Task, model: nn.Module, val_loader: DataLoader, dev, autocast, max_batches: int) -> dict[str, float]:
    """Mean of the task's validation metrics over up to ``max_batches`` held-out batches."""
    model.eval()
    totals: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(val_loader):
        if i >= max_batches:
            break
        with autocast:
            metrics = task.validate(model, _to_device(batch, dev))
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        n += 1
    model.train()
    return {k: v / max(n, 1) for k, v in totals.items()}


def _save(task: Task, model: nn.Module, opt, sched, step: int, run_dir: Path, ctx: DistContext) -> Path:
    extra = {"world_size": ctx.world, **task.extra_state()}
    if ctx.world > 1:
        # Each rank draws its own random numbers: keep all of them for an exact resume.
        states = [None] * ctx.world
        dist.all_gather_object(states, rng_state())
        extra["rank_rng"] = states
    path = run_dir / f"checkpoint_step_{step}.pt"
    if ctx.main:
        save_checkpoint(path, model, task.config, step=step, optimizer=opt, scheduler=sched, extra=extra)
        atomic_copy(path, run_dir / "latest.pt")
    if ctx.world > 1:
        dist.barrier()
    return path


# ---- the command line shared by the three trainers ---------------------------------------------

def base_parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m trainers.train_{kind}",
                                description=f"Train the Genie {kind} on a folder of H5 videos.")
    p.add_argument("--config", required=True, help=f"stage YAML, e.g. configs/{kind}_config.yaml")
    p.add_argument("--data_dir", required=True, help="folder of .h5 episodes (genie-env collect writes them)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--out_dir", default=None, help="checkpoint root (default: train.out_dir of the config); "
                                                   f"checkpoints go to <out_dir>/{kind}/")
    p.add_argument("--max_steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--batch_size", type=int, default=None, help="override train.batch_size (global)")
    p.add_argument("--grad_checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--time_limit", type=float, default=None, metavar="MINUTES",
                   help="override train.time_limit_min: fit max_steps to this much wall clock, "
                        "measured from the first step")
    p.add_argument("--init_from", default=None, metavar="CKPT",
                   help="override train.init_from: start a new run from this trained checkpoint's weights "
                        "(fine-tuning; the optimizer and schedule start afresh)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=None,
                   help="continue from <out_dir>/<model>/latest.pt (the default when it exists)")
    g.add_argument("--no_resume", dest="resume", action="store_false", help="refuse to continue a run")
    return p


def stage_from_args(args: argparse.Namespace, kind: str) -> StageConfig:
    cfg = load_config(args.config)
    if cfg.kind != kind:
        raise TrainingError(f"{args.config} configures a {cfg.kind}, but this is the {kind} trainer; "
                            f"use configs/{kind}_config.yaml or python -m trainers.train_{cfg.kind}")
    if args.max_steps is not None:
        cfg.train.max_steps = args.max_steps
    if args.batch_size is not None:
        cfg.train.batch_size = args.batch_size
    if args.grad_checkpointing:
        cfg.model.grad_checkpointing = True
    if args.compile:
        cfg.train.compile = True
    if args.time_limit is not None:
        cfg.train.time_limit_min = args.time_limit
    if args.init_from is not None:
        cfg.train.init_from = args.init_from
    if cfg.data.clip_len > cfg.model.max_frames:
        raise TrainingError(f"{args.config}: data.clip_len {cfg.data.clip_len} exceeds model.max_frames "
                            f"{cfg.model.max_frames}")
    return cfg


def run_cli(main: Callable[[argparse.Namespace], Path], parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse, run, and turn the errors users can fix into one line and exit code 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def run(a):
        path = main(a)
        if int(os.environ.get("RANK", "0")) == 0:
            log.info("checkpoint: %s", path)

    try:
        return reporting_errors(parser.prog, run, args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
