"""Env stepping: cached vs full-recompute step time by context length, batched vs single worlds,
the achieved FLOP/s of stepping against this machine's measured matmul FLOP/s, and the same
batching through Gymnasium (``gym.make_vec`` vs ``gym.make`` envs stepped in turn).

    python benchmarks/env_step.py                           # the bundled model on the CPU
    python benchmarks/env_step.py --dtype bfloat16 --compile
    python benchmarks/env_step.py --preset seed --device cuda --dtype bfloat16 --compile

A step = one MaskGIT decode of the next frame (``maskgit_steps`` passes) + decoding it to pixels.
*Cached* is what ``Genie-v0`` does: each pass runs the new frame's tokens against the temporal KV
caches. *Recompute* re-runs the whole context window through the dynamics model at every pass and
through the tokenizer decoder once, as an implementation without a cache must. Both are timed in
the same run; the ratios are the figures to read.

``--preset seed`` steps randomly initialised models of the seed configs (configs/*.yaml: the
default dynamics model, 25 MaskGIT passes): step time does not depend on the weights. The
context sweep runs to ``--context`` past frames; where a model's window is shorter, its window
is widened to ``context + 1`` frames (temporal positions are rotary, so no weight depends on
the window length).
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from genie_env.device import resolve_device, resolve_dtype
from genie_env.bundled import bundled_paths, load_world_models
from genie_env.prompts import load_prompts
from genie_env.world import World

ROOT = Path(__file__).resolve().parents[1]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, dev, repeats: int) -> dict:
    """Median seconds of each ``fns[k]()``, timed in ``repeats`` rounds that call every function
    once each (after one untimed round), so that a slow spell of a shared machine hits all of
    them alike and the ratios between them stay honest."""
    times = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            sync(dev)
            t0 = time.perf_counter()
            fn()
            sync(dev)
            if r:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def with_window(model, frames: int):
    """``model`` rebuilt with a temporal window of at least ``frames`` frames, same weights."""
    if model.cfg.max_frames >= frames:
        return model
    wide = type(model)(dataclasses.replace(model.cfg, max_frames=frames))
    wide.load_state_dict(model.state_dict())
    return wide


def seed_models():
    """Random-weight models of the seed tokenizer and dynamics configs."""
    from genie_env.config import load_config
    from genie_env.models import build_model
    torch.manual_seed(0)
    return tuple(build_model(c.kind, c.model) for c in
                 (load_config(ROOT / "configs" / f"{k}_config.yaml") for k in ("tokenizer", "dynamics")))


@torch.no_grad()
def context_sweep(world: World, prompts, max_ctx: int, repeats: int):
    """Seconds per step, cached and recomputed, at each context length 1..max_ctx (+ the new frame)."""
    tok, dyn, dev, steps = world.tokenizer, world.dynamics, world.device, world.maskgit_steps
    gen = torch.Generator(device=dev).manual_seed(0)
    world.reset(prompts[:1])
    history, actions, fns = [world.tokens.clone()], [], {}
    row = torch.tensor([0], device=dev)
    for ctx in range(1, max_ctx + 1):
        a = torch.tensor([ctx % dyn.cfg.num_actions])  # on the host, as an env passes it
        # Each timed step starts from its context: restore the caches (a copy, timed too).
        saved = (world.dyn_cache.subset(row), world.dec_cache.subset(row), world.hidden.clone())

        def cached(saved=saved, a=a):
            world.dyn_cache.assign(row, saved[0])
            world.dec_cache.assign(row, saved[1])
            world.hidden.copy_(saved[2])
            world.step(a, generators=[gen])

        def recompute(ctx_tokens=torch.stack(history, dim=1), a=a.to(dev),
                      ctx_actions=torch.tensor([actions], dtype=torch.long, device=dev).reshape(1, -1)):
            nxt = dyn.sample_next_uncached(ctx_tokens, ctx_actions, a, steps, generators=[gen])
            window = torch.cat([ctx_tokens, nxt[:, None]], dim=1)[:, -tok.cfg.max_frames:]
            tok.decode(window)[:, -1]

        fns[("cached", ctx)], fns[("recompute", ctx)] = cached, recompute
        cached()  # advance the world by one frame for the next context length
        history.append(world.tokens.clone())
        actions.append(int(a))
    t = interleaved(fns, dev, repeats)
    return [(ctx, t[("cached", ctx)], t[("recompute", ctx)]) for ctx in range(1, max_ctx + 1)]


@torch.no_grad()
def batch_sweep(tok, dyn, prompts, dev, steps, sizes, repeats, dtype, compile, warm_steps):
    """Frames per second of one batched world of N vs N separate single worlds stepped one after
    another (what N envs without batching do), and FLOPs per frame (counted eagerly:
    FlopCounterMode cannot see inside compiled code)."""
    from torch.utils.flop_counter import FlopCounterMode

    def world_of(n, compiled):
        w = World(tok, dyn, n, dev, steps, dtype=dtype, compile=compiled)
        w.reset(prompts[torch.arange(n) % len(prompts)])
        for _ in range(warm_steps):  # by default, fill the window: steady-state steps
            w.step(torch.arange(n) % dyn.cfg.num_actions)
        return w

    flops = {}
    for n in sizes:
        eager = world_of(n, False)
        counter = FlopCounterMode(display=False)
        with counter:
            eager.step(torch.zeros(n, dtype=torch.long))
        flops[n] = counter.get_total_flops() / n
        del eager
    batched = {n: world_of(n, compile) for n in sizes}
    singles = [world_of(1, compile) for _ in range(max(sizes))]
    act = torch.tensor([1])  # actions on the host, as envs pass them

    def in_turn(n):
        for w in singles[:n]:
            w.step(act)

    fns = {}
    for n in sizes:
        acts = torch.arange(n) % dyn.cfg.num_actions
        fns[("batched", n)] = lambda n=n, acts=acts: batched[n].step(acts)
        fns[("singles", n)] = lambda n=n: in_turn(n)
    t = interleaved(fns, dev, repeats)
    return [(n, n / t[("batched", n)], n / t[("singles", n)], flops[n]) for n in sizes]


def gym_sweep(sizes, repeats, warm_steps, **kwargs):
    """Steps per second of ``gym.make_vec("Genie-v0", num_envs=N)`` against N ``gym.make``
    envs stepped one after another: what an RL loop sees, numpy frames and Gymnasium's
    wrappers included. Episodes run on (auto-reset) as they would in training."""
    import gymnasium as gym

    import genie_env  # noqa: F401
    vecs = {n: gym.make_vec("Genie-v0", num_envs=n, **kwargs) for n in sizes}
    singles = [gym.make("Genie-v0", **kwargs) for _ in range(max(sizes))]
    for i, env in enumerate([*vecs.values(), *singles]):
        env.reset(seed=i)

    def in_turn(n):
        for env in singles[:n]:
            _, _, terminated, truncated, _ = env.step(1)
            if terminated or truncated:
                env.reset()

    fns = {}
    for n in sizes:
        acts = np.arange(n) % vecs[n].single_action_space.n
        fns[("vector", n)] = lambda n=n, acts=acts: vecs[n].step(acts)
        fns[("singles", n)] = lambda n=n: in_turn(n)
    for _ in range(warm_steps):
        for n in sizes:
            fns[("vector", n)]()
        in_turn(len(singles))
    t = interleaved(fns, torch.device("cpu"), repeats)
    return [(n, n / t[("vector", n)], n / t[("singles", n)]) for n in sizes]


def matmul_flops_per_s(dev, dtype, n: int = 2048, repeats: int = 5) -> float:
    """This machine's measured dense matmul rate: the ceiling the env's rate is compared with."""
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    return 2 * n ** 3 / interleaved({0: lambda: a @ b}, dev, repeats)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("bundled", "seed"), default="bundled",
                   help="bundled: the shipped CoinRun model (or --tokenizer_path/--dynamics_path); "
                        "seed: random-weight models of the seed configs")
    p.add_argument("--tokenizer_path", default=None)
    p.add_argument("--dynamics_path", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the per-frame steps; MODE e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--maskgit_steps", type=int, default=None, help="default: the model's")
    p.add_argument("--context", type=int, default=16, help="longest context of the sweep (0 skips it)")
    p.add_argument("--sizes", default="1,4,16,64", help="batch sizes ('' skips the batch sweep)")
    p.add_argument("--gym", action=argparse.BooleanOptionalAction, default=True,
                   help="also time gym.make_vec against gym.make envs in turn (bundled preset only)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (the median is reported)")
    p.add_argument("--warm_steps", type=int, default=None,
                   help="steps each world takes before timing (default: the model's window)")
    args = p.parse_args()
    dev = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, dev)
    if args.preset == "seed":
        tok, dyn = seed_models()
        prompts = torch.rand(8, 3, *tok.cfg.image_size)
    else:
        tok, dyn = load_world_models(args.tokenizer_path, args.dynamics_path, dev)
        prompts = load_prompts(bundled_paths()["prompts"], tok.cfg.image_size)
    prompts = prompts.to(dev)
    steps = args.maskgit_steps or dyn.cfg.maskgit_steps
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    dt = str(dtype).removeprefix("torch.")
    compiled = "eager" if not args.compile else "compiled" if args.compile is True else f"compiled ({args.compile})"
    parts = []
    for k, v in vars(args).items():
        if k == "gym":
            parts.append("--gym" if v else "--no-gym")
        elif v is True:
            parts.append(f"--{k}")
        elif v is not None and v is not False:
            parts.append(f"--{k} {v}")
    cmd = " ".join(parts)
    print(f"# env_step: {date.today()}, {name}, torch {torch.__version__}, {args.preset} model "
          f"({sum(q.numel() for q in dyn.parameters()) / 1e6:.1f}M-parameter dynamics), "
          f"{dt}, {compiled}, maskgit_steps={steps}")
    print(f"# command: python benchmarks/env_step.py {cmd}\n")

    if args.context > 0:
        window = args.context + 1
        wtok, wdyn = with_window(tok, window), with_window(dyn, window)
        notes = [f"window widened from {dyn.cfg.max_frames} to {window} frames"] if wdyn is not dyn else []
        if args.compile:
            notes.append("cached steps compiled, recompute eager")
        print(f"## Step time by context length{' (' + '; '.join(notes) + ')' if notes else ''}\n")
        print("| context frames | cached (ms) | recompute (ms) | cached / cached at 1 | recompute / cached |")
        print("|---|---|---|---|---|")
        world = World(wtok, wdyn, 1, dev, steps, dtype=dtype, compile=args.compile)
        rows = context_sweep(world, prompts, args.context, args.repeats)
        base = rows[0][1]
        for ctx, c, r in rows:
            print(f"| {ctx} | {c * 1e3:.1f} | {r * 1e3:.1f} | {c / base:.2f} | {r / c:.2f} |", flush=True)
        del world, wtok, wdyn

    sizes = [int(s) for s in args.sizes.split(",") if s]
    warm = args.warm_steps if args.warm_steps is not None else dyn.cfg.max_frames
    if sizes:
        peak = matmul_flops_per_s(dev, dtype)
        print("\n## Batched worlds vs single worlds stepped in turn\n")
        print("| N | batched frames/s | N singles in turn, frames/s | ratio | GFLOP/frame | achieved GFLOP/s | of matmul peak |")
        print("|---|---|---|---|---|---|---|")
        for n, batched, single, per_frame in batch_sweep(tok, dyn, prompts, dev, steps, sizes, args.repeats,
                                                         dtype, args.compile, warm):
            achieved = per_frame * batched
            print(f"| {n} | {batched:.1f} | {single:.1f} | {batched / single:.2f} | {per_frame / 1e9:.3f} | "
                  f"{achieved / 1e9:.1f} | {achieved / peak:.1%} |", flush=True)
        print(f"\nMeasured {dt} matmul (2048x2048) on this machine: {peak / 1e9:.0f} GFLOP/s.")

    if sizes and args.gym and args.preset == "bundled" and args.compile:
        print("\n(The gym sweep is skipped with --compile: each of its envs loads and would compile its "
              "own model.)")
    elif sizes and args.gym and args.preset == "bundled":
        print("\n## Through Gymnasium: gym.make_vec vs gym.make envs stepped in turn\n")
        print("| N | make_vec steps/s | N make envs in turn, steps/s | ratio |")
        print("|---|---|---|---|")
        for n, vec, single in gym_sweep(sizes, args.repeats, warm, tokenizer_path=args.tokenizer_path,
                                        dynamics_path=args.dynamics_path, device=args.device,
                                        maskgit_steps=args.maskgit_steps, dtype=args.dtype,
                                        compile=args.compile):
            print(f"| {n} | {vec:.1f} | {single:.1f} | {vec / single:.2f} |", flush=True)


if __name__ == "__main__":
    main()
