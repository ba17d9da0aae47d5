#!/usr/bin/env bash
# Where a DPO step's time goes: the workload of scripts/bench/dpo.sh (SmolLM2-135M, LoRA r=8 on q,v,
# 2 pairs x 128 tokens, sigmoid, f32, 2 threads) under `perf record` (software cpu-clock, so it works
# where hardware counters are not exposed). Prints the hottest symbols (self time, all threads) and
# the share of the step in candle's matmul (gemm), the model's fused ops, the allocator and the rest.
#
#   scripts/bench/dpo_profile.sh [STEPS]     (needs the SmolLM2 GGUF and Debian's linux-perf)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-4}
THREADS=${THREADS:-2}
GGUF=${TEMPER_SMOLLM2:-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cargo build -q --release -p temper
target/release/temper convert "$GGUF" "$WORK/smollm2" >/dev/null
python3 scripts/bench/dpo_data.py "$WORK/prefs.jsonl" 16

RAYON_NUM_THREADS=$THREADS perf record -q -e cpu-clock -F 499 -g -o "$WORK/perf.data" -- \
  target/release/temper dpo --model "$WORK/smollm2" --data "$WORK/prefs.jsonl" --output "$WORK/run" --quiet \
  --loss sigmoid --beta 0.1 --max-steps "$STEPS" --batch-size 2 --max-length 128 --learning-rate 1e-5 \
  --lr-scheduler constant --shuffle false --lora-r 8 --lora-alpha 16 --lora-dropout 0.05 --lora-targets q,v \
  >/dev/null 2>"$WORK/log"

python3 - "$WORK/run/metrics.jsonl" <<'PYEOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
print(f"steps {len(recs)}; median s/step (first excluded) {statistics.median(r['step_s'] for r in recs[1:]):.3f} (under perf)")
PYEOF

perf report -i "$WORK/perf.data" --no-children --sort symbol --percent-limit 0.7 --stdio 2>/dev/null \
  | grep -E '^ +[0-9.]+%' | head -40 > "$WORK/top.txt"
cat "$WORK/top.txt"
# The whole profile grouped by where a symbol comes from.
perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
  | grep -E '^ +[0-9.]+%' | python3 -c '
import re, sys
groups = {"matmul (gemm)": r"gemm|matmul|sgemm", "allocator and copies": r"mi_|malloc|free|memcpy|memmove|memset|alloc",
          "candle elementwise/reduce": r"candle_core::(cpu_backend|op|tensor|storage|strided|shape|layout)|binary_map|unary_map|reduce",
          "rayon and threads": r"rayon|crossbeam|futex|sched|__lll|pthread",
          "kernel": r"\[k\]"}
tot = {k: 0.0 for k in groups}; tot["other"] = 0.0
for line in sys.stdin:
    m = re.match(r"\s+([0-9.]+)%\s+(.*)", line)
    if not m: continue
    p, sym = float(m.group(1)), m.group(2)
    for k, pat in groups.items():
        if re.search(pat, sym):
            tot[k] += p; break
    else:
        tot["other"] += p
print("\nshare of samples by group:")
for k, v in sorted(tot.items(), key=lambda x: -x[1]):
    print(f"  {k:<28}{v:6.1f}%")
'
