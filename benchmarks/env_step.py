"""Env stepping: cached vs full-recompute step time by context length, batched vs single envs,
and the achieved FLOP/s of stepping against this machine's measured matmul FLOP/s.

    python benchmarks/env_step.py                     # the bundled model on the CPU
    python benchmarks/env_step.py --device cuda --tokenizer_path T --dynamics_path D

A step = one MaskGIT decode of the next frame (``maskgit_steps`` passes) + decoding it to pixels.
*Cached* is what ``Genie-v0`` does: each pass runs the new frame's tokens against the temporal KV
caches. *Recompute* re-runs the whole context window through the dynamics model at every pass and
through the tokenizer decoder once, as an implementation without a cache must. Both are timed in
the same run; the ratios are the figures to read.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch

from genie_env.device import resolve_device
from genie_env.env import bundled_paths, load_prompts, load_world
from genie_env.world import World


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def context_sweep(tok, dyn, prompts, dev, steps, repeats):
    """Seconds per step, cached and recomputed, at each context length 1..max_frames-1 (+ the new frame)."""
    rows = []
    max_ctx = dyn.cfg.max_frames - 1
    world = World(tok, dyn, 1, dev, steps)
    gen = torch.Generator(device=dev).manual_seed(0)
    world.reset(prompts[:1].to(dev))
    history = [world.tokens.clone()]
    actions = []
    for ctx in range(1, max_ctx + 1):
        a = torch.tensor([ctx % dyn.cfg.num_actions], device=dev)
        row = torch.tensor([0], device=dev)
        # Each timed step starts from the same context: restore the caches (a copy, timed too).
        saved = (world.dyn_cache.subset(row), world.dec_cache.subset(row), world.hidden.clone())

        def cached():
            world.dyn_cache.assign(row, saved[0])
            world.dec_cache.assign(row, saved[1])
            world.hidden.copy_(saved[2])
            world.step(a, generators=[gen])

        ctx_tokens = torch.stack(history, dim=1)  # (1, ctx, N)
        ctx_actions = torch.tensor([actions], dtype=torch.long, device=dev).reshape(1, -1)

        def recompute():
            nxt = dyn.sample_next_uncached(ctx_tokens, ctx_actions, a, steps, generators=[gen])
            window = torch.cat([ctx_tokens, nxt[:, None]], dim=1)[:, -tok.cfg.max_frames:]
            tok.decode(window)[:, -1]

        rows.append((ctx, timed(cached, dev, repeats), timed(recompute, dev, repeats)))
        cached()  # advance the world by one frame for the next context length
        history.append(world.tokens.clone())
        actions.append(int(a))
    return rows


@torch.no_grad()
def batch_sweep(tok, dyn, prompts, dev, steps, sizes, repeats, warm_steps):
    """Frames per second of one batched world of N vs N single worlds stepped in turn."""
    rows = []
    single = World(tok, dyn, 1, dev, steps)
    single.reset(prompts[:1].to(dev))
    for _ in range(warm_steps):
        single.step(torch.tensor([0], device=dev))
    t_single = timed(lambda: single.step(torch.tensor([1], device=dev)), dev, repeats)
    for n in sizes:
        world = World(tok, dyn, n, dev, steps)
        world.reset(prompts[torch.arange(n) % len(prompts)].to(dev))
        for _ in range(warm_steps):
            world.step(torch.zeros(n, dtype=torch.long, device=dev))
        acts = torch.arange(n, device=dev) % dyn.cfg.num_actions
        t = timed(lambda: world.step(acts), dev, repeats)
        rows.append((n, n / t, 1 / t_single))
    return rows


def matmul_flops_per_s(dev, n: int = 2048, dtype=torch.float32, repeats: int = 5) -> float:
    """This machine's measured dense matmul rate: the ceiling the env's rate is compared with."""
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, dev, repeats)


@torch.no_grad()
def step_flops(tok, dyn, prompts, dev, steps, n) -> float:
    """FLOPs of one batched step of n worlds, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    world = World(tok, dyn, n, dev, steps)
    world.reset(prompts[torch.arange(n) % len(prompts)].to(dev))
    counter = FlopCounterMode(display=False)
    with counter:
        world.step(torch.zeros(n, dtype=torch.long, device=dev))
    return float(counter.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer_path", default=None)
    p.add_argument("--dynamics_path", default=None)
    p.add_argument("--prompt", default=None, help="prompt frames (default: the bundled ones)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--maskgit_steps", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--sizes", default="1,4,16,64")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    dev = resolve_device(args.device)
    tok, dyn = load_world(args.tokenizer_path, args.dynamics_path, dev)
    steps = args.maskgit_steps or dyn.cfg.maskgit_steps
    prompts = load_prompts(args.prompt or bundled_paths()["prompts"], tok.cfg.image_size)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"# env_step: {date.today()}, {name}, torch {torch.__version__}, maskgit_steps={steps}")
    print(f"# command: python benchmarks/env_step.py {' '.join(f'--{k} {v}' for k, v in vars(args).items() if v is not None)}\n")
    print("## Step time by context length\n")
    print("| context frames | cached (ms) | recompute (ms) | cached / cached at 1 | recompute / cached |")
    print("|---|---|---|---|---|")
    rows = context_sweep(tok, dyn, prompts, dev, steps, args.repeats)
    base = rows[0][1]
    for ctx, c, r in rows:
        print(f"| {ctx} | {c * 1e3:.1f} | {r * 1e3:.1f} | {c / base:.2f} | {r / c:.2f} |")
    print("\n## Batched worlds vs single worlds stepped in turn\n")
    peak = matmul_flops_per_s(dev)
    print("| N | batched frames/s | N singles in turn, frames/s | ratio | GFLOP/frame | achieved GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|---|")
    for n, batched, single in batch_sweep(tok, dyn, prompts, dev, steps, [int(s) for s in args.sizes.split(",")],
                                          args.repeats, dyn.cfg.max_frames):
        per_frame = step_flops(tok, dyn, prompts, dev, steps, n) / n
        achieved = per_frame * batched
        print(f"| {n} | {batched:.1f} | {single:.1f} | {batched / single:.2f} | {per_frame / 1e9:.3f} | "
              f"{achieved / 1e9:.1f} | {achieved / peak:.1%} |")
    print(f"\nMeasured fp32 matmul (2048x2048) on this machine: {peak / 1e9:.0f} GFLOP/s.")


if __name__ == "__main__":
    main()
