#!/usr/bin/env bash
# DPO step benchmark, Tempering vs TRL on the same machine in one run: SmolLM2-135M with LoRA r=8 on q,v
# (reference = adapters off in both), batch 2 pairs x 128 tokens, sigmoid loss, f32, 2 threads. Prints
# seconds per step (median, first step excluded), peak RSS, Tempering's split of a step (forward and
# backward of policy and reference vs optimiser), and the ratio TRL time / Tempering time (above 1:
# Tempering is faster).
#
#   scripts/bench/dpo.sh [STEPS]     (needs the SmolLM2 GGUF and /work/pyref/venv with trl, peft)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-5}
THREADS=${THREADS:-2}
GGUF=${TEMPER_SMOLLM2:-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
PY=${PYREF:-/work/pyref/venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cargo build -q --release -p temper
# One HF directory for both systems (TRL reads HF directories).
target/release/temper convert "$GGUF" "$WORK/smollm2" >/dev/null
"$PY" scripts/bench/dpo_data.py "$WORK/prefs.jsonl" 16

{
  RAYON_NUM_THREADS=$THREADS /usr/bin/time -f "%M" -o "$WORK/rss" \
    target/release/temper dpo --model "$WORK/smollm2" --data "$WORK/prefs.jsonl" --output "$WORK/run" --quiet \
    --loss sigmoid --beta 0.1 --max-steps "$STEPS" --batch-size 2 --max-length 128 --learning-rate 1e-5 \
    --lr-scheduler constant --shuffle false --lora-r 8 --lora-alpha 16 --lora-dropout 0.05 --lora-targets q,v \
    >/dev/null 2>"$WORK/log"
  "$PY" - "$WORK/run/metrics.jsonl" "$WORK/rss" <<'PYEOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
assert all(r["tokens"] == 2 * 2 * 128 for r in recs), [r["tokens"] for r in recs]
med = statistics.median(r["step_s"] for r in recs[1:])
print(json.dumps({"system": "tempering", "s_per_step": med,
                  "peak_rss_mb": int(open(sys.argv[2]).read().split()[-1]) / 1024,
                  "forward_backward_s": statistics.median(r["forward_backward_s"] for r in recs[1:]),
                  "optimizer_s": statistics.median(r["optimizer_s"] for r in recs[1:]),
                  "steps": [r["step_s"] for r in recs]}))
PYEOF
  for ckpt in off on; do
    TRL_EXPERIMENTAL_SILENCE=1 OMP_NUM_THREADS=$THREADS "$PY" scripts/bench/dpo_trl.py --model "$WORK/smollm2" \
      --data "$WORK/prefs.jsonl" --steps "$STEPS" --threads "$THREADS" --gradient-checkpointing $ckpt \
      --out "$WORK/trl-$ckpt" 2>"$WORK/trl-$ckpt.log" | tail -1
  done
} | tee "$WORK/results.jsonl"

"$PY" - "$WORK/results.jsonl" <<'PYEOF'
import json, sys
r = {x["system"]: x for x in map(json.loads, open(sys.argv[1]))}
print(f"\n{'system':<19}{'s/step':>9}{'peak RSS MB':>13}")
for s in ["tempering", "trl", "trl-checkpointing"]:
    print(f"{s:<19}{r[s]['s_per_step']:>9.3f}{r[s]['peak_rss_mb']:>13.0f}")
t = r["tempering"]
print(f"tempering split: forward+backward (policy and reference) {t['forward_backward_s']:.3f} s, optimiser {t['optimizer_s']:.3f} s")
print(f"ratio (TRL s/step / Tempering s/step): {r['trl']['s_per_step'] / t['s_per_step']:.2f}"
      f" (TRL's default, gradient checkpointing on: {r['trl-checkpointing']['s_per_step'] / t['s_per_step']:.2f})")
PYEOF
