#!/usr/bin/env bash
# Serving throughput and latency of `temper serve`, and of llama.cpp's `llama-server` on the same
# GGUF when it has been built (scripts/llama-server.sh), same machine, one run each: requests/s,
# tokens/s, time to first token (TTFT) and inter-token latency (ITL) p50/p99, at concurrency 1, 4
# and 16, streaming greedy completions with EOS ignored (MAX_TOKENS new tokens each), prompts from
# scripts/bench/generate_prompts.txt. Prints a table and temper's tokens/s ratio to llama-server.
#
# For a like-for-like comparison give both the same precision: temper dequantises GGUF weights to
# f32 while llama-server runs them as stored, so pass an f32 GGUF (MODEL=...) to compare the
# engines rather than the number formats. The issue's target: >= 1.0x llama-server's tokens/s at
# concurrency 16, where batched decoding should win.
#
# Usage: scripts/bench/serve.sh [CONCURRENCIES] [REQUESTS_PER_LEVEL] [MAX_TOKENS]
#        e.g. scripts/bench/serve.sh "1 4 16" 32 64
# Env:   MODEL (default SmolLM2's GGUF from scripts/fetch-smollm2.sh), TEMPER_BIN (default: a
#        release build of temper), LLAMA_SERVER (default ~/.cache/tempering/llama-server/bin/
#        llama-server; absent: temper only), PYTHON (default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
LEVELS="${1:-1 4 16}"
PER_LEVEL="${2:-32}"
NEW="${3:-64}"
MODEL="${MODEL:-$ROOT/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
PY="${PYTHON:-python3}"
PROMPTS="$ROOT/scripts/bench/generate_prompts.txt"
LLAMA="${LLAMA_SERVER:-$HOME/.cache/tempering/llama-server/bin/llama-server}"
if [ -z "${TEMPER_BIN:-}" ]; then
  cargo build -q --release -p temper
  TEMPER_BIN="$ROOT/target/release/temper"
fi
max_level=$(for l in $LEVELS; do echo "$l"; done | sort -n | tail -1)
OUT="$(mktemp)"
LOG="$(mktemp)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -f "$OUT" "$LOG"
}
trap cleanup EXIT

# Waits for URL/health to answer 200 (both servers answer 503 while loading); 1 if the server
# exited or was not ready in 5 minutes (its log's tail printed).
wait_ready() {
  for _ in $(seq 1 600); do
    if "$PY" -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$1" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 5 "$LOG" >&2
      echo "the server exited before it was ready" >&2
      wait "$pid" 2>/dev/null || true
      pid=""
      return 1
    fi
    sleep 0.5
  done
  tail -n 5 "$LOG" >&2
  echo "the server at $1 was not ready in 5 minutes" >&2
  return 1
}

run_levels() { # URL MODEL_NAME LABEL
  for c in $LEVELS; do
    n=$(( PER_LEVEL > c ? PER_LEVEL : c ))
    "$PY" "$ROOT/scripts/bench/serve_client.py" "$1" "$2" "$PROMPTS" "$c" "$n" "$NEW" "$3" | tee -a "$OUT"
  done
}

port=$(( 20000 + RANDOM % 20000 ))
"$TEMPER_BIN" serve "$MODEL" --port "$port" --served-model-name bench \
  --max-concurrency $(( max_level * 2 )) --batch-rows "$max_level" 2>"$LOG" &
pid=$!
wait_ready "http://127.0.0.1:$port" || exit 1
run_levels "http://127.0.0.1:$port" bench temper
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""

if [ -x "$LLAMA" ]; then
  port=$(( port + 1 ))
  "$LLAMA" -m "$MODEL" --port "$port" --host 127.0.0.1 -np "$max_level" -c $(( 2048 * max_level )) \
    --cont-batching --no-webui -t "$(nproc)" >"$LOG" 2>&1 &
  pid=$!
  if wait_ready "http://127.0.0.1:$port"; then
    run_levels "http://127.0.0.1:$port" bench llama-server
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  else
    echo "(llama-server at $LLAMA did not start: temper only)"
  fi
else
  echo "(no llama-server at $LLAMA: temper only; scripts/llama-server.sh builds it)"
fi

"$PY" - "$OUT" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"\n{'server':>12} {'conc':>4} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'errors':>6}")
by = {}
for r in rows:
    by.setdefault(r["concurrency"], {})[r["server"]] = r
    print(f"{r['server']:>12} {r['concurrency']:>4} {r['requests_per_s']:>7.2f} {r['tokens_per_s']:>8.1f} "
          f"{r['ttft_p50_ms']:>7.1f}ms {r['ttft_p99_ms']:>7.1f}ms {r['itl_p50_ms']:>6.1f}ms {r['itl_p99_ms']:>6.1f}ms {r['errors']:>6}")
    if r["errors"]:
        print(f"{'':>12} first error: {r['first_error']}")
for c, e in sorted(by.items()):
    if "temper" in e and "llama-server" in e:
        t, l = e["temper"], e["llama-server"]
        print(f"concurrency {c}: temper / llama-server tokens/s = {t['tokens_per_s'] / l['tokens_per_s']:.2f}x")
PYEOF
