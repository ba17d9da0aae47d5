#!/usr/bin/env bash
# Time per online-RL step, split by phase, for GRPO, PPO and TRPO on the same prompts: the tiny
# arithmetic model (full fine-tuning) and, when present, SmolLM2-135M with LoRA r=8 on q,v. Prints one
# line per run with the medians (first step excluded) of the phases logged in metrics.jsonl:
# generation, scoring, forward (PPO/TRPO: old logprobs, values, reference), update (TRPO: policy step
# and critic regression separately), and the whole step. TRPO runs twice: the Fisher-vector products on
# the whole batch and on a quarter of it (--fisher-fraction 0.25); on SmolLM2 also with group advantages.
#
#   scripts/bench/rl_step.sh [STEPS]       (TEMPER_SMOLLM2=path.gguf to include SmolLM2)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-4}
THREADS=${THREADS:-2}
GGUF=${TEMPER_SMOLLM2:-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
PY=${PYREF:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cargo build -q --release -p temper
T=target/release/temper
$T tasks train-tiny arithmetic --level 1 --steps 150 --train-problems 2000 --eval-problems 0 \
  --output "$WORK/tiny" >/dev/null 2>&1

run() { # label, command, model, extra flags...
  local label=$1 cmd=$2 model=$3; shift 3
  local dir="$WORK/$label"
  RAYON_NUM_THREADS=$THREADS $T "$cmd" --model "$model" --steps "$STEPS" --quiet --output "$dir" \
    --seed 1 --log-rollouts-every 0 "$@" >/dev/null 2>"$dir.log" || { cat "$dir.log"; exit 1; }
  "$PY" - "$dir/metrics.jsonl" "$label" <<'PYEOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"rollout_step"' in l][1:]
keys = ["generation_s", "scoring_s", "forward_s", "update_s", "policy_update_s", "critic_update_s", "step_s"]
out = {"run": sys.argv[2]}
for k in keys:
    vals = [r[k] for r in recs if k in r]
    if vals:
        out[k] = round(statistics.median(vals), 3)
out["completion_length"] = round(statistics.mean(r["completion_length"] for r in recs), 1)
print(json.dumps(out))
PYEOF
}

TINY="--task arithmetic --level 1 --num-generations 4 --prompts-per-step 16 --max-completion-length 48 --micro-batch-size 64 --learning-rate 5e-4"
run tiny-grpo grpo "$WORK/tiny" $TINY
run tiny-ppo ppo "$WORK/tiny" $TINY --epochs 2 --num-mini-batches 2 --kl-coef 0.02
run tiny-trpo trpo "$WORK/tiny" $TINY --epochs 2 --num-mini-batches 2 --kl-coef 0.02 --max-kl 0.02
run tiny-trpo-fisher25 trpo "$WORK/tiny" $TINY --epochs 2 --num-mini-batches 2 --kl-coef 0.02 --max-kl 0.02 --fisher-fraction 0.25

if [ -f "$GGUF" ]; then
  SMOL="--task arithmetic --level 2 --num-generations 2 --prompts-per-step 2 --max-completion-length 32 --micro-batch-size 4 --learning-rate 1e-5 --lora-r 8 --lora-targets q,v --dtype f32"
  run smol-grpo grpo "$GGUF" $SMOL
  run smol-ppo ppo "$GGUF" $SMOL --epochs 1
  run smol-trpo trpo "$GGUF" $SMOL --epochs 1 --cg-iterations 5
  run smol-trpo-fisher25 trpo "$GGUF" $SMOL --epochs 1 --cg-iterations 5 --fisher-fraction 0.25
  run smol-trpo-group trpo "$GGUF" $SMOL --epochs 1 --cg-iterations 5 --fisher-fraction 0.25 --advantages group
fi
