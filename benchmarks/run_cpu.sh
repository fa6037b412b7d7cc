#!/usr/bin/env bash
# Every CPU benchmark behind BENCHMARKS.md, one after another; prints Markdown tables.
# About 8 minutes on the project's 2-core CPU machine (see BENCHMARKS.md for the measured time).
#   bash benchmarks/run_cpu.sh | tee cpu_results.md
set -uo pipefail  # a failing command is reported and the rest still run
cd "$(dirname "$0")/.."
run() { echo; echo "\$ $*"; echo; "$@" || echo "**failed with exit code $?**"; }
run python benchmarks/env_step.py
run python benchmarks/env_step.py --compile --context 0 --no-gym
run python benchmarks/env_step.py --compile --dtype bfloat16 --context 0 --no-gym
run python benchmarks/train_step.py --preset tiny --device cpu
run python benchmarks/trainer_throughput.py
run python benchmarks/train_step.py --preset seed --device cpu --batch_size 1 --steps 2 --grad_checkpointing
