"""Training-step time, throughput and peak memory of each stage's model at a given batch size.

    python benchmarks/train_step.py --preset tiny --device cpu
    python benchmarks/train_step.py --preset seed --device cuda --batch_size 16 --bf16 --grad_checkpointing
    python benchmarks/train_step.py --configs configs/candidate/dynamics_cfg_config.yaml --compile

Each (config, batch) runs in a fresh subprocess so that peak memory (CUDA: max allocated;
CPU: the process's max RSS above its size before the model existed) belongs to that step alone.
A step is forward + backward + AdamW on random inputs of the config's shape: frames for the
tokenizer and LAM, tokens and actions for the dynamics model (the frozen tokenizer and LAM that
label real batches are not included). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(config: str, batch: int, steps: int, device: str, bf16: bool, ckpt: bool, compile: bool = False) -> dict:
    import torch

    from genie_env.config import load_config
    from genie_env.models import build_model
    from genie_env.nn.st_transformer import count_parameters
    from trainers.loop import peak_memory_gib

    cfg = load_config(config)
    cfg.model.grad_checkpointing = ckpt
    dev = torch.device(device)
    base = peak_memory_gib(torch.device("cpu"))  # the process before the model existed
    torch.manual_seed(0)
    model = build_model(cfg.kind, cfg.model).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fn = torch.compile(model) if compile else model
    t = cfg.data.clip_len
    m = cfg.model
    if cfg.kind == "dynamics":
        n = m.token_grid[0] * m.token_grid[1]
        inputs = (torch.randint(0, m.vocab_size, (batch, t, n), device=dev),
                  torch.randint(0, m.num_actions, (batch, t - 1), device=dev))
    else:
        inputs = (torch.rand(batch, t, m.in_channels, *m.image_size, device=dev),)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 1):  # the first step warms up (and compiles) and is not timed
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            loss = fn(*inputs)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    peak = peak_memory_gib(dev) - (base if dev.type == "cpu" else 0.0)
    step = statistics.median(times)
    return {"config": config, "kind": cfg.kind, "params_M": count_parameters(model) / 1e6, "batch": batch,
            "clip_len": t, "step_s": step, "frames_per_s": batch * t / step, "peak_GiB": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "seed"], default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch_size", type=int, default=None, help="default: each config's train.batch_size")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--grad_checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile each model, as train --compile does")
    p.add_argument("--configs", nargs="+", default=None, help="these stage YAMLs instead of the preset's three")
    p.add_argument("--one", nargs=2, metavar=("CONFIG", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.steps, args.device, args.bf16,
                             args.grad_checkpointing, args.compile)))
        return
    sys.path.insert(0, str(ROOT))
    from genie_env.config import load_config
    folder = ROOT / "configs" / ("tiny" if args.preset == "tiny" else "")
    rows = []
    configs = [ROOT / c for c in args.configs] if args.configs else \
        [folder / f"{kind}_config.yaml" for kind in ("tokenizer", "lam", "dynamics")]
    for config in configs:
        batch = args.batch_size or load_config(config).train.batch_size
        cmd = [sys.executable, __file__, "--one", str(config), str(batch), "--steps", str(args.steps),
               "--device", args.device] + (["--bf16"] if args.bf16 else []) + \
              (["--grad_checkpointing"] if args.grad_checkpointing else []) + (["--compile"] if args.compile else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            rows.append({"config": str(config.relative_to(ROOT)), "error": out.stderr.strip().splitlines()[-1]})
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["config"] = str(Path(row["config"]).relative_to(ROOT))
        rows.append(row)
    print(f"# train_step: {date.today()}, {platform.node()}, {platform.processor() or platform.machine()}, "
          f"device={args.device}, bf16={args.bf16}, grad_checkpointing={args.grad_checkpointing}, compile={args.compile}")
    print(f"# command: python benchmarks/train_step.py {' '.join(sys.argv[1:])}\n")
    print("| config | params (M) | batch x frames | step (s) | frames/s | peak memory (GiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | error: {r['error']} | | | | |")
        else:
            print(f"| {r['config']} | {r['params_M']:.1f} | {r['batch']} x {r['clip_len']} | {r['step_s']:.3f} | "
                  f"{r['frames_per_s']:.1f} | {r['peak_GiB']:.2f} |")


if __name__ == "__main__":
    main()
