#!/usr/bin/env bash
# Training-step benchmark, Tempering vs PyTorch on the same machine in one run: SmolLM2-135M, batch 4 x
# 128 tokens, f32, 2 threads; full fine-tuning (AdamW) and LoRA r=8 on q,v (PEFT). Prints seconds per
# step (median, first step excluded), tokens/s, peak RSS and the ratio PyTorch time / Tempering time
# (above 1: Tempering is faster).
#
#   scripts/bench/train.sh [STEPS]        (needs models/smollm2/*.gguf and /work/pyref/venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-6}
THREADS=${THREADS:-2}
GGUF=${TEMPER_SMOLLM2:-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
PY=${PYREF:-/work/pyref/venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cargo build -q --release -p temper
"$PY" scripts/bench/train_data.py "$WORK/data.jsonl" 16

ours() { # mode, extra flags...
  local mode=$1; shift
  local run="$WORK/run-$mode"
  RAYON_NUM_THREADS=$THREADS /usr/bin/time -f "%M" -o "$WORK/rss-$mode" \
    target/release/temper sft --model "$GGUF" --data "$WORK/data.jsonl" --output "$run" --quiet \
    --max-steps "$STEPS" --batch-size 4 --max-length 128 --learning-rate 1e-5 --lr-scheduler constant \
    --weight-decay 0 --max-grad-norm 1 --shuffle false "$@" >/dev/null 2>"$WORK/log-$mode"
  "$PY" - "$run/metrics.jsonl" "$WORK/rss-$mode" "$mode" <<'PYEOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
steps = [r["step_s"] for r in recs][1:]
med = statistics.median(steps)
assert all(r["tokens"] == 4 * 128 for r in recs), [r["tokens"] for r in recs]
print(json.dumps({"system": "tempering", "mode": sys.argv[3], "s_per_step": med,
                  "tokens_per_s": 4 * 128 / med, "peak_rss_mb": int(open(sys.argv[2]).read().split()[-1]) / 1024,
                  "forward_backward_s": statistics.median(r["forward_backward_s"] for r in recs[1:]),
                  "optimizer_s": statistics.median(r["optimizer_s"] for r in recs[1:])}))
PYEOF
}

{
  ours full
  OMP_NUM_THREADS=$THREADS "$PY" scripts/bench/train_torch.py --gguf "$GGUF" --data "$WORK/data.jsonl" \
    --mode full --steps "$STEPS" --threads "$THREADS" | tail -1
  ours lora --lora-r 8 --lora-alpha 16 --lora-dropout 0.05 --lora-targets q,v
  OMP_NUM_THREADS=$THREADS "$PY" scripts/bench/train_torch.py --gguf "$GGUF" --data "$WORK/data.jsonl" \
    --mode lora --steps "$STEPS" --threads "$THREADS" | tail -1
} | tee "$WORK/results.jsonl"

"$PY" - "$WORK/results.jsonl" <<'PYEOF'
import json, sys
r = {(x["system"], x["mode"]): x for x in map(json.loads, open(sys.argv[1]))}
print(f"\n{'mode':<6}{'system':<11}{'s/step':>9}{'tok/s':>9}{'peak RSS MB':>13}")
for mode in ["full", "lora"]:
    for sys_ in ["tempering", "pytorch"]:
        x = r[(sys_, mode)]
        print(f"{mode:<6}{sys_:<11}{x['s_per_step']:>9.3f}{x['tokens_per_s']:>9.1f}{x['peak_rss_mb']:>13.0f}")
    print(f"{mode:<6}ratio (PyTorch s/step / Tempering s/step): {r[('pytorch', mode)]['s_per_step'] / r[('tempering', mode)]['s_per_step']:.2f}")
PYEOF
