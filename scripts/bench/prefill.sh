#!/usr/bin/env bash
# SmolLM2-135M prefill, batch 8 x 128 tokens, f32, 2 threads: Tempering and PyTorch/transformers on
# the same machine in one go; prints both and the ratio (ours / PyTorch, higher is better).
# Builds with the release profile (the figures in the README are release-build figures). Needs a Python with torch + transformers + gguf: PYTHON=/path/to/venv/bin/python (see
# scripts/reference/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
GGUF="${TEMPER_SMOLLM2:-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
B="${BATCH:-8}"; T="${LEN:-128}"
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2
# The allocator settings `temper` applies itself (see crates/temper/src/main.rs).
export MIMALLOC_PURGE_DELAY=-1 MIMALLOC_ARENA_EAGER_COMMIT=1 CANDLE_NUM_THREADS=1
cargo build -q --release -p tempering-model --example bench_prefill
ours=$(target/release/examples/bench_prefill "$GGUF" --batch "$B" --len "$T")
theirs=$("$PY" scripts/bench/prefill_torch.py "$GGUF" --batch "$B" --len "$T" 2>/dev/null)
echo "$ours"
echo "$theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratio (tempering / pytorch tokens/s): {a['tokens_per_s'] / b['tokens_per_s']:.2f}")
PY
