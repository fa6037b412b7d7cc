#!/usr/bin/env bash
# The GPU benchmarks that BENCHMARKS.md asks for: the default (seed-size) dynamics model at its
# 25 MaskGIT steps, single and batched, bf16, eager / torch.compile / CUDA graphs, and seed-size
# training at the seed batch (one step on random inputs, and the three trainers end to end). Needs one CUDA GPU; prints Markdown tables.
#   bash benchmarks/run_gpu.sh | tee gpu_results.md
set -uo pipefail  # one failing command (say, out of memory) must not cost the rest
cd "$(dirname "$0")/.."
run() { echo; echo "\$ $*"; echo; "$@" || echo "**failed with exit code $?**"; }
run python benchmarks/env_step.py --preset seed --device cuda --dtype bfloat16
run python benchmarks/env_step.py --preset seed --device cuda --dtype bfloat16 --compile --context 0
# CUDA graphs copy the KV caches into the graph's buffers at each replay: 1 and 16 rows only.
run python benchmarks/env_step.py --preset seed --device cuda --dtype bfloat16 --compile reduce-overhead --context 0 --sizes 1,16
run python benchmarks/env_step.py --preset seed --device cuda --dtype float32 --context 0 --sizes 1,16
run python benchmarks/env_step.py --device cuda --context 0
run python benchmarks/train_step.py --preset seed --device cuda --batch_size 16 --bf16 --grad_checkpointing
run python benchmarks/train_step.py --preset seed --device cuda --batch_size 16 --bf16
run python benchmarks/train_step.py --preset tiny --device cuda --bf16
run python benchmarks/trainer_throughput.py --preset seed --device cuda --batch_size 16 --steps 50 --grad_checkpointing
