#!/usr/bin/env bash
# Runs one parser's fuzz target for longer than the test suite does (not in CI):
#   scripts/fuzz.sh PARSER [SECONDS]      (SECONDS defaults to 600)
# PARSER: safetensors, gguf, tokenizer_json, config_json, adapter_config (tempering-model), jsonl,
# parquet (tempering-tasks), config (tempering-train's run configs). The target runs freshly seeded
# proptest rounds (PROPTEST_CASES cases each, 2000 by default) until SECONDS have passed and prints
# how many cases (executions) it ran; a crash fails with the shrunk input, saved under
# target/tmp/fuzz-crashes/ (move it to fixtures/bad/ with a regression test once fixed).
# The test binary is built first and then run on its own, so the long run holds no cargo lock
# (other builds in the workspace go on meanwhile). Run it niced on a shared machine:
#   nice -n 19 scripts/fuzz.sh gguf
# PARSER chat: chat templates (tempering-model's tests/fuzz_chat.rs), rendered under small limits.
set -euo pipefail
cd "$(dirname "$0")/.."
parser="${1:-}"
seconds="${2:-600}"
case "$parser" in
    safetensors) crate=tempering-model test=safetensors_weights ;;
    gguf) crate=tempering-model test=gguf_model_and_tokenizer ;;
    tokenizer_json | config_json) crate=tempering-model test="$parser" ;;
    adapter_config) crate=tempering-model test=adapter_config_json ;;
    jsonl | parquet) crate=tempering-tasks test="$parser" ;;
    config) crate=tempering-train test=config_toml ;;
    chat) crate=tempering-model test=chat_template target=fuzz_chat ;;
    *)
        echo "usage: scripts/fuzz.sh PARSER [SECONDS]; PARSER: safetensors gguf tokenizer_json config_json adapter_config jsonl parquet config chat" >&2
        exit 2
        ;;
esac
export FUZZ_SECONDS="$seconds" PROPTEST_CASES="${PROPTEST_CASES:-2000}"
target="${target:-fuzz}"
bin=$(cargo test -p "$crate" --test "$target" --no-run 2>&1 | tee /dev/stderr |
    sed -n "s/^ *Executable tests\/$target.rs (\(.*\))\$/\1/p" | tail -n 1)
if [ -z "$bin" ]; then
    echo "scripts/fuzz.sh: could not build the fuzz tests of $crate" >&2
    exit 1
fi
exec "$bin" --exact "$test" --nocapture
