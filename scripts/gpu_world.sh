#!/usr/bin/env bash
# Issue 9's GPU run: one script that collects CoinRun on every CPU core and trains the world's
# models (configs/gpu/, bf16) side by side on one GPU within a wall-clock budget, then leaves
# weights-only checkpoints and the logs in $OUT. Sized for a machine lent for ~10 minutes.
#
#   OUT=out TOTAL=560 bash scripts/gpu_world.sh                   # a GPU machine
#   OUT=/tmp/toy DEVICE=cpu TOY=1 bash scripts/gpu_world.sh       # the same steps at toy size, CPU
#   OUT=out OLD_TOK=T OLD_LAM=L OLD_DYN=D bash scripts/gpu_world.sh  # carry on a world trained elsewhere
#
# What runs, all started from one clock (TOTAL seconds in all, outputs included):
#   collect  COLLECTORS parallel random-policy collectors (actions held 1..8 steps), EPISODES each,
#            seeds 0..COLLECTORS-1 (the held-out set, seed 1000, is no one's)
#   tok      the k-means tokenizer: codes fitted before step 1, then its decoder trains on; with
#            OLD_TOK (a k-means tokenizer checkpoint) its codes and decoder start from that one
#   lam      a new LAM for LAM_MIN minutes
#   dyn      the candidate dynamics config, on tok's codes and OLD_LAM's actions (a carried LAM
#            checkpoint; without one it waits for lam), to the end; with OLD_DYN (a dynamics
#            checkpoint of the same sizes, trained on OLD_TOK's codes and OLD_LAM's actions) it
#            starts from those weights, so the CPU's steps are not spent again
#   large    the 6x256 dynamics config, the same inputs, to the end (LARGE=0: not run)
#   newlam   the candidate dynamics config on the new LAM's actions, from when lam ends
# Each dynamics run first takes 2 steps into a scratch folder, so a failure in its validation,
# sampling or saving shows in seconds, not at the end. Any run that fails stops the script.
#
# Needs genie_env's dependencies and Procgen importable (PYTHONPATH will do; PyAV and pygame are
# not needed). Procgen's libenv.so loads libGL.so.1 and X11 libraries even though it renders
# off-screen: an image without them (the lent H200's) needs copies on LD_LIBRARY_PATH.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the results}
DEVICE=${DEVICE:-cuda}
TOTAL=${TOTAL:-560}
COLLECTORS=${COLLECTORS:-16}
EPISODES=${EPISODES:-250}
LAM_MIN=${LAM_MIN:-2.5}
OLD_LAM=${OLD_LAM:-}
OLD_TOK=${OLD_TOK:-}
OLD_DYN=${OLD_DYN:-}
LARGE=${LARGE:-1}
WORK=${WORK:-/tmp/gpu_world}
TOY=${TOY:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T0=$(date +%s)
now() { echo $(( $(date +%s) - T0 )); }
say() { echo "[$(now) s] $*"; }
mkdir -p "$OUT" "$WORK/logs"
DATA=$WORK/data RUN=$WORK/run LOGS=$WORK/logs
STEPS=()
if [ "$TOY" = 1 ]; then STEPS=(--max_steps 6 --batch_size 4); fi

# Minutes left for a run that starts now and must end SETUP seconds before the deadline.
DEADLINE=$(( TOTAL - 45 ))
minutes_left() { $PY -c "print(max(0.1, ($DEADLINE - $(now) - ${1:-30}) / 60))"; }

declare -A PIDS
fail() {
  say "FAILED: $1"; tail -n 40 "$LOGS/$1.log"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  collect_outputs; exit 3
}
check() {  # stop everything if a run has died with an error
  for name in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
      wait "${PIDS[$name]}"; rc=$?; unset "PIDS[$name]"
      [ $rc -eq 0 ] && say "$name finished" || fail "$name"
    fi
  done
}
start() {  # start NAME ARGS...: a trainer in the background, logged
  local name=$1; shift
  say "start $name: $*"
  "$PY" -m "$@" > "$LOGS/$name.log" 2>&1 &
  PIDS[$name]=$!
}
smoke() {  # smoke NAME ARGS...: 2 steps into a scratch folder, in the foreground
  local name=$1; shift
  "$PY" -m "$@" "${STEPS[@]}" --out_dir "$WORK/smoke_$name" --max_steps 2 > "$LOGS/smoke_$name.log" 2>&1 || fail "smoke_$name"
  say "smoke test of $name passed"
}
collect_outputs() {
  say "collecting outputs"
  "$PY" - "$RUN" "$OUT" <<'EOF'
import sys
from pathlib import Path
from genie_env.checkpoint import load_checkpoint
from trainers.export import weights_only
run, out = Path(sys.argv[1]), Path(sys.argv[2])
for name in ("tokenizer", "lam", "dyn", "large", "newlam"):
    kind = name if name in ("tokenizer", "lam") else "dynamics"
    src = run / name / kind / "latest.pt"
    if not src.exists():
        print(f"{name}: no checkpoint"); continue
    size, _ = weights_only(src, out / f"{name}.pt", kind)
    print(f"{name}: step {load_checkpoint(out / f'{name}.pt')['step']}, {size / 2**20:.1f} MiB")
EOF
  # Files over 15 MiB come back in parts: cat NAME.pt.part* > NAME.pt
  for f in "$OUT"/*.pt; do
    [ -e "$f" ] || continue
    if [ "$(stat -c %s "$f")" -gt $(( 15 * 1024 * 1024 )) ]; then split -b 15M -d "$f" "$f.part" && rm "$f"; fi
  done
  ls "$DATA" > "$LOGS/data_files.txt" 2>/dev/null
  tar czf "$OUT/logs.tar.gz" -C "$WORK" logs $(cd "$WORK" && ls -d run/*/*/tb 2>/dev/null)
  ls -la "$OUT"
}

say "device $DEVICE; budget $TOTAL s; $(nproc --all) CPU cores"
[ "$DEVICE" = cuda ] && nvidia-smi -L
$PY -c "import torch, genie_env; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 2

# ---- data: every core collects -----------------------------------------------------------------
if ! ls "$DATA"/*.h5 >/dev/null 2>&1; then
  for ((k = 0; k < COLLECTORS; k++)); do
    $PY -m genie_env.cli collect --env coinrun --episodes "$EPISODES" --max_episode_steps 300 --action_repeat 8 \
        --seed $k --episodes_per_file 50 --out "$DATA" > "$LOGS/collect_$k.log" 2>&1 &
  done
  wait || true
  grep -h "wrote" "$LOGS"/collect_*.log | head -3
fi
n_files=$(ls "$DATA"/*.h5 | wc -l)
say "data: $n_files files, $(du -sh "$DATA" | cut -f1)"
[ "$n_files" -gt 0 ] || { tail "$LOGS"/collect_0.log; exit 2; }

# ---- tokenizer and LAM --------------------------------------------------------------------------
# The tokenizer's set-up (the k-means fit on the CPU) took about 100 s on the H200 machine.
TOK_INIT=()
if [ -n "$OLD_DYN" ] && { [ -z "$OLD_TOK" ] || [ -z "$OLD_LAM" ]; }; then
  say "OLD_DYN needs the OLD_TOK and OLD_LAM it was trained on"; exit 2
fi
for f in "$OLD_TOK" "$OLD_LAM" "$OLD_DYN"; do [ -z "$f" ] || [ -f "$f" ] || { say "no such checkpoint: $f"; exit 2; }; done
[ -n "$OLD_TOK" ] && TOK_INIT=(--init_from "$OLD_TOK")
start tok trainers.train_tokenizer --config configs/gpu/tokenizer_config.yaml --data_dir "$DATA" \
    --device "$DEVICE" --out_dir "$RUN/tokenizer" --time_limit "$(minutes_left 120)" "${TOK_INIT[@]}" "${STEPS[@]}"
smoke lam trainers.train_lam --config configs/gpu/lam_config.yaml --data_dir "$DATA" --device "$DEVICE"
start lam trainers.train_lam --config configs/gpu/lam_config.yaml --data_dir "$DATA" \
    --device "$DEVICE" --out_dir "$RUN/lam" --time_limit "$LAM_MIN" "${STEPS[@]}"
NEW_LAM=$RUN/lam/lam/latest.pt
TOK=$RUN/tokenizer/tokenizer/checkpoint_step_100.pt
[ "$TOY" = 1 ] && TOK=$RUN/tokenizer/tokenizer/latest.pt
[ -n "$OLD_TOK" ] && TOK=$OLD_TOK  # the codes the run keeps: the dynamics need not wait
say "waiting for the tokenizer's first checkpoint (its codes are fixed from step 1)"
until [ -e "$TOK" ]; do check; sleep 2; done
say "tokenizer codes ready"

dyn() {  # dyn NAME CONFIG LAM [ARGS...]
  local name=$1 cfg=$2 lam=$3; shift 3
  local args=(trainers.train_dynamics --config "$cfg" --data_dir "$DATA" --device "$DEVICE"
              --tokenizer_path "$TOK" --lam_path "$lam" "$@")
  smoke "$name" "${args[@]}"
  start "$name" "${args[@]}" --out_dir "$RUN/$name" --time_limit "$(minutes_left 30)" "${STEPS[@]}"
}
if [ -z "$OLD_LAM" ]; then
  say "no OLD_LAM: dyn and large wait for the new LAM"
  while [ -n "${PIDS[lam]:-}" ]; do check; sleep 2; done
  OLD_LAM=$NEW_LAM
fi
DYN_INIT=()
[ -n "$OLD_DYN" ] && DYN_INIT=(--init_from "$OLD_DYN")
dyn dyn configs/gpu/dynamics_config.yaml "$OLD_LAM" "${DYN_INIT[@]}"
[ "$LARGE" = 1 ] && dyn large configs/gpu/dynamics_large_config.yaml "$OLD_LAM"
while [ -n "${PIDS[lam]:-}" ]; do check; sleep 2; done
if [ "$OLD_LAM" != "$NEW_LAM" ]; then dyn newlam configs/gpu/dynamics_config.yaml "$NEW_LAM"; fi

# ---- until the deadline -------------------------------------------------------------------------
while [ ${#PIDS[@]} -gt 0 ] && [ "$(now)" -lt $(( TOTAL - 30 )) ]; do check; sleep 3; done
for name in "${!PIDS[@]}"; do say "$name still running at the deadline: stopped (its last checkpoint stays)"; kill "${PIDS[$name]}"; done
wait 2>/dev/null
for f in "$LOGS"/*.log; do grep -h "throughput\|time limit\|step [0-9]*: " "$f" | sed "s|^|$(basename "$f" .log): |" | tail -4; done
collect_outputs
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=memory.used,memory.total --format=csv
say "done"
