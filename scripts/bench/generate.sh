#!/usr/bin/env bash
# Decode throughput of the local engine against transformers.generate, same machine, same run:
# SmolLM2-135M (f32), greedy, EOS ignored, 64 new tokens, batch 1, 8 and 32 (distinct prompts of
# different lengths, left-padded). Each measurement runs in its own process so peak memory is its own.
# Tempering runs three times: f32, and with bf16 or Q8_0 matrices (`--dtype bf16|q8_0`: f32
# activations), each with the decode loop on a rayon worker as `temper`'s main thread is. Prints a
# table: new tokens/s (whole call, prefill included), decode-only tokens/s, time to first token,
# peak RSS, our f32 ratio to transformers and our bf16 and Q8_0 ratios to our f32. Without the
# Python reference, our rows alone. llama.cpp at the same precisions: scripts/bench/llama_decode.sh.
#
# Usage: scripts/bench/generate.sh [BATCHES] [NEW_TOKENS]     e.g. scripts/bench/generate.sh "1 8 32" 64
# Env:   TEMPER_SMOLLM2 (GGUF path), PYTHON (default /work/pyref/venv/bin/python)
set -euo pipefail
# The allocator settings `temper` applies itself (see crates/temper/src/main.rs).
export MIMALLOC_PURGE_DELAY=-1 MIMALLOC_ARENA_EAGER_COMMIT=1 CANDLE_NUM_THREADS=1
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
BATCHES="${1:-1 8 32}"
NEW="${2:-64}"
GGUF="${TEMPER_SMOLLM2:-$ROOT/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
PY="${PYTHON:-/work/pyref/venv/bin/python}"
PROMPTS="$ROOT/scripts/bench/generate_prompts.txt"
cargo build -q --release -p tempering-generate --example generate_bench
BIN="$ROOT/target/release/examples/generate_bench"
OUT="$(mktemp)"
for b in $BATCHES; do
  IN_POOL=1 "$BIN" "$GGUF" "$PROMPTS" "$b" "$NEW" | tee -a "$OUT"
  IN_POOL=1 BF16=1 "$BIN" "$GGUF" "$PROMPTS" "$b" "$NEW" | tee -a "$OUT"
  IN_POOL=1 Q8=1 "$BIN" "$GGUF" "$PROMPTS" "$b" "$NEW" | tee -a "$OUT"
  if [ -x "$PY" ]; then
    "$PY" "$ROOT/scripts/bench/generate_transformers.py" "$GGUF" "$PROMPTS" "$b" "$NEW" 2>/dev/null | tee -a "$OUT"
  fi
done
python3 - "$OUT" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    by.setdefault(r["batch"], {})[r["engine"]] = r
print(f"\n{'batch':>5} {'engine':>12} {'tok/s':>8} {'decode tok/s':>12} {'TTFT ms':>8} {'peak MiB':>9}")
for b, e in sorted(by.items()):
    for name in ("tempering", "tempering-bf16", "tempering-q8_0", "transformers"):
        r = e.get(name)
        if r:
            print(f"{b:>5} {name:>12} {r['tokens_per_s']:>8.1f} {r['decode_tokens_per_s']:>12.1f} {r['ttft_s']*1e3:>8.1f} {r['peak_rss_mib']:>9.0f}")
    for compact in ("tempering-bf16", "tempering-q8_0"):
        if "tempering" in e and compact in e:
            t, h = e[compact], e["tempering"]
            same = "same" if t["first_tokens"] == h["first_tokens"] else "DIFFERENT"
            label = compact.split("-")[1] + "/f32"
            print(f"{'':>5} {label:>12} {t['tokens_per_s']/h['tokens_per_s']:>8.2f}x {t['decode_tokens_per_s']/h['decode_tokens_per_s']:>11.2f}x   (first greedy tokens of prompt 0: {same})")
    if "tempering" in e and "transformers" in e:
        t, h = e["tempering"], e["transformers"]
        same = "same" if t["first_tokens"] == h["first_tokens"] else "DIFFERENT"
        print(f"{'':>5} {'ratio':>12} {t['tokens_per_s']/h['tokens_per_s']:>8.2f}x {t['decode_tokens_per_s']/h['decode_tokens_per_s']:>11.2f}x   (first greedy tokens of prompt 0: {same})")
PYEOF
rm -f "$OUT"
