#!/usr/bin/env bash
# GRPO step benchmark, Tempering vs TRL's GRPOTrainer on the same machine in one run. Workload of
# issue 8: 8 prompts x 8 generations x exactly 64 new tokens (both sides sample past EOS), temperature
# 1, beta 0, dapo loss, one iteration, f32, 2 threads; on the committed tiny arithmetic SFT model (full
# fine-tuning) and on SmolLM2-135M with LoRA r=8 on q,v when its GGUF is present. Prints seconds per
# step (median, first step excluded), Tempering's split into generation, scoring and update, peak RSS,
# and the ratio TRL time / Tempering time (above 1: Tempering is faster).
# At beta 0 TRL builds no reference model; Tempering's KL guard runs the reference forward on
# every 4th batch only (`--kl-every 4`, its default), so steps 1-3 do the same work as TRL's.
#
#   scripts/bench/grpo.sh [STEPS]     (needs /work/pyref/venv, or PYREF=python, with torch, trl, peft)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-3}
THREADS=${THREADS:-2}
GGUF=${TEMPER_SMOLLM2:-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
PY=${PYREF:-/work/pyref/venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cargo build -q --release -p temper
T=target/release/temper
$T tasks generate arithmetic --level 3 --n 256 --seed 7 --output "$WORK/all.jsonl" >/dev/null
# Prompt and answer only: both systems see the same prompts, and TRL gets no `completion` column.
"$PY" -c "
import json, sys
with open(sys.argv[2], 'w') as out:
    for l in open(sys.argv[1]):
        r = json.loads(l)
        out.write(json.dumps({'prompt': r['prompt'], 'answer': r['answer']}) + '\n')
" "$WORK/all.jsonl" "$WORK/prompts.jsonl"

bench() { # label, model dir, lora r
  local label=$1 model=$2 r=$3
  local lora=()
  [ "$r" -gt 0 ] && lora=(--lora-r "$r" --lora-alpha $((2 * r)) --lora-targets q,v)
  RAYON_NUM_THREADS=$THREADS /usr/bin/time -f "%M" -o "$WORK/$label.rss" \
    $T grpo --model "$model" --data "$WORK/prompts.jsonl" --output "$WORK/$label" --quiet \
    --reward math_answer --num-generations 8 --prompts-per-step 8 --steps "$STEPS" \
    --max-completion-length 64 --ignore-eos --micro-batch-size 16 --learning-rate 1e-5 --beta 0 \
    --loss-type dapo --log-rollouts-every 0 --seed 1 "${lora[@]}" >/dev/null 2>"$WORK/$label.log" \
    || { cat "$WORK/$label.log"; exit 1; }
  "$PY" - "$WORK/$label/metrics.jsonl" "$WORK/$label.rss" "$label" <<'PYEOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"rollout_step"' in l]
assert all(r["completion_length"] == 64 for r in recs), [r["completion_length"] for r in recs]
m = lambda k: statistics.median(r[k] for r in recs[1:])
print(json.dumps({"system": "tempering", "model": sys.argv[3], "s_per_step": m("step_s"),
                  "generation_s": m("generation_s"), "scoring_s": m("scoring_s"), "update_s": m("update_s"),
                  "peak_rss_mb": int(open(sys.argv[2]).read().split()[-1]) / 1024,
                  "steps": [r["step_s"] for r in recs]}))
PYEOF
  TRL_EXPERIMENTAL_SILENCE=1 OMP_NUM_THREADS=$THREADS "$PY" scripts/bench/grpo_trl.py --model "$model" \
    --data "$WORK/prompts.jsonl" --steps "$STEPS" --threads "$THREADS" --lora-r "$r" \
    --out "$WORK/trl-$label" 2>"$WORK/trl-$label.log" | tail -1 \
    | "$PY" -c "import json,sys; d=json.loads(sys.stdin.read()); d['model']='$label'; print(json.dumps(d))" \
    || { tail -30 "$WORK/trl-$label.log"; exit 1; }
}

{
  bench tiny fixtures/models/tiny-arith-sft 0
  if [ -f "$GGUF" ]; then
    # One HF directory for both systems (TRL reads HF directories).
    $T convert "$GGUF" "$WORK/smollm2" >/dev/null
    bench smollm2-lora "$WORK/smollm2" 8
  fi
} | tee "$WORK/results.jsonl"

"$PY" - "$WORK/results.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\n{'model':<14}{'system':<11}{'s/step':>9}{'gen s':>8}{'score s':>9}{'update s':>10}{'peak RSS MB':>13}")
for model in dict.fromkeys(r["model"] for r in rows):
    by = {r["system"]: r for r in rows if r["model"] == model}
    for s in ["tempering", "trl"]:
        r = by[s]
        f = lambda k: f"{r[k]:.3f}" if k in r else "-"
        print(f"{model:<14}{s:<11}{r['s_per_step']:>9.3f}{f('generation_s'):>8}{f('scoring_s'):>9}{f('update_s'):>10}{r['peak_rss_mb']:>13.0f}")
    print(f"{model}: ratio (TRL s/step / Tempering s/step) {by['trl']['s_per_step'] / by['tempering']['s_per_step']:.2f}")
PYEOF
