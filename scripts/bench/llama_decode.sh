#!/usr/bin/env bash
# Batch-1 decode of llama.cpp's llama-server against Tempering at the same precision: SmolLM2's
# GGUF re-written with its matrices in F32, BF16 and Q8_0 (scripts/bench/gguf_retype.py, the
# `gguf` Python package), each served by llama-server (2 threads, one slot) and asked three times
# for 64 greedy tokens with EOS ignored (its own `timings.predicted_per_second`, decode only); then
# generate_bench on the same files (`--dtype f32 | bf16 | q8_0`: decode-only tokens/s). One run,
# both systems, ratios printed.
#
# Usage: scripts/bench/llama_decode.sh
# Env:   TEMPER_SMOLLM2 (GGUF path), PYTHON (with `gguf` and numpy; default /work/pyref/venv/bin/python)
set -euo pipefail
export MIMALLOC_PURGE_DELAY=-1 MIMALLOC_ARENA_EAGER_COMMIT=1 CANDLE_NUM_THREADS=1
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
GGUF="${TEMPER_SMOLLM2:-$ROOT/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
PY="${PYTHON:-/work/pyref/venv/bin/python}"
SERVER="${LLAMA_SERVER:-$HOME/.cache/tempering/llama-server/bin/llama-server}"
PROMPTS="$ROOT/scripts/bench/generate_prompts.txt"
PORT=8391
TMP="$(mktemp -d)"
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$TMP"' EXIT
cargo build -q --release -p tempering-generate --example generate_bench
BIN="$ROOT/target/release/examples/generate_bench"
printf '%-6s %12s %12s %7s\n' dtype llama.cpp tempering ratio
for kind in f32 bf16 q8_0; do
  file="$TMP/smollm2-$kind.gguf"
  "$PY" "$ROOT/scripts/bench/gguf_retype.py" "$GGUF" "$file" "$kind"
  "$SERVER" -m "$file" --port $PORT -t 2 -c 2048 -np 1 --no-webui >"$TMP/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 120); do curl -sf localhost:$PORT/health >/dev/null && break; sleep 1; done
  best=0
  for _ in 1 2 3; do
    r=$(curl -s localhost:$PORT/completion -d '{"prompt":"Once upon a time, in a land far away, there lived","n_predict":64,"ignore_eos":true,"temperature":0,"cache_prompt":false}' \
      | python3 -c "import json,sys; print(json.load(sys.stdin)['timings']['predicted_per_second'])")
    best=$(python3 -c "print(max($best, $r))")
  done
  kill $pid; wait $pid 2>/dev/null || true; pid=
  env_flag=""
  [ "$kind" = bf16 ] && env_flag="BF16=1"
  [ "$kind" = q8_0 ] && env_flag="Q8=1"
  ours=0
  for _ in 1 2 3; do
    r=$(env IN_POOL=1 $env_flag "$BIN" "$file" "$PROMPTS" 1 64 | python3 -c "import json,sys; print(json.load(sys.stdin)['decode_tokens_per_s'])")
    ours=$(python3 -c "print(max($ours, $r))")
  done
  python3 -c "print(f'{\"$kind\":<6} {$best:>12.1f} {$ours:>12.1f} {$ours/$best:>6.2f}x')"
done
