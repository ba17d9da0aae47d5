#!/usr/bin/env bash
# Time for `temper tasks train-tiny` to train each built-in task's default recipe (its hardest level)
# on this machine, and the greedy accuracy it reaches on 200 held-out test problems. The target for
# the default task (arithmetic) is under 3 minutes on 2 cores. Prints one line per task.
#
#   scripts/bench/train_tiny.sh [TASK ...]      (default: every built-in task)
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${THREADS:-2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo build -q --release -p temper
T=target/release/temper
TASKS=("$@")
if [ ${#TASKS[@]} -eq 0 ]; then
  mapfile -t TASKS < <($T tasks list | awk '{print $1}')
fi
for task in "${TASKS[@]}"; do
  start=$(date +%s.%N)
  out=$(RAYON_NUM_THREADS=$THREADS $T tasks train-tiny "$task" --output "$WORK/$task" 2>/dev/null)
  end=$(date +%s.%N)
  trained=$(grep -o 'in [0-9]* s; final loss [0-9.]*' <<<"$out" || true)
  acc=$(grep -o 'greedy accuracy on .*' <<<"$out" || true)
  printf '%-16s wall %6.1f s (train-tiny says: %s) %s\n' "$task" "$(echo "$end - $start" | bc)" "$trained" "$acc"
done
