"""Throughput and peak memory of the three trainers themselves, on real CoinRun clips.

    python benchmarks/trainer_throughput.py          # tiny configs, CPU
    python benchmarks/trainer_throughput.py --preset seed --device cuda --batch_size 16 --steps 50 --grad_checkpointing

Unlike ``train_step.py`` (one model on random inputs), this runs ``python -m trainers.train_*``
end to end: H5 loading and resizing in the DataLoader, and for the dynamics stage the frozen
tokenizer and LAM that label each batch. Stages run in order, each in its own process (so
peak memory is that stage's), the dynamics stage on the tokenizer and LAM just trained. The
figures are the trainer's own summary line: the median frames/s over the run's steps and the
peak memory (max RSS on the CPU, max allocated on a GPU). Episodes are collected with our
CoinRun collector unless ``--data_dir`` is given.
"""
from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"(\w+) throughput: median ([\d.]+) frames/s over (\d+) steps \(batch (\d+) x (\d+) "
                     r"frames\), peak memory ([\d.]+) GiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("tiny", "seed"), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=40, help="training steps per stage")
    p.add_argument("--batch_size", type=int, default=None, help="default: each config's")
    p.add_argument("--data_dir", default=None, help="H5 episodes (default: collect 12 CoinRun episodes)")
    p.add_argument("--grad_checkpointing", action="store_true", help="passed on to the trainers")
    args = p.parse_args()
    folder = ROOT / "configs" / ("tiny" if args.preset == "tiny" else "")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data_dir
        if data is None:
            from genie_env.data.collect import collect_procgen
            data = Path(tmp) / "data"
            collect_procgen(data, "coinrun", num_episodes=12, seed=0, max_episode_steps=100)
        out = Path(tmp) / "runs"
        rows = []
        for kind in ("tokenizer", "lam", "dynamics"):
            cmd = [sys.executable, "-m", f"trainers.train_{kind}", "--config", str(folder / f"{kind}_config.yaml"),
                   "--data_dir", str(data), "--out_dir", str(out), "--device", args.device,
                   "--max_steps", str(args.steps)] + (["--grad_checkpointing"] if args.grad_checkpointing else [])
            if args.batch_size:
                cmd += ["--batch_size", str(args.batch_size)]
            if kind == "dynamics":
                cmd += ["--tokenizer_path", str(out / "tokenizer" / "latest.pt"),
                        "--lam_path", str(out / "lam" / "latest.pt")]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            found = SUMMARY.search(res.stderr)
            if res.returncode or not found:
                tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
                raise SystemExit(f"train_{kind} failed (exit {res.returncode}): {tail}")
            _, fps, steps, batch, frames, peak = found.groups()
            rows.append((kind, int(steps), f"{batch} x {frames}", float(fps), float(peak), wall))
    print(f"# trainer_throughput: {date.today()}, {platform.machine()}, device={args.device}, {args.preset} configs")
    print(f"# command: python benchmarks/trainer_throughput.py {' '.join(sys.argv[1:])}\n")
    print("| trainer | steps | batch x frames | frames/s (median step) | peak memory (GiB) | wall (s) |")
    print("|---|---|---|---|---|---|")
    for kind, steps, shape, fps, peak, wall in rows:
        print(f"| train_{kind} | {steps} | {shape} | {fps:.1f} | {peak:.2f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
