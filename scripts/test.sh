#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs OpenBLAS, fetches SmolLM2, sets up the
# `openai` client's venv (.venv-openai) and builds llama.cpp's llama-server (cached outside the
# clone, about 5.5 minutes once) if absent, then runs every test. (Plain `cargo test
# --workspace` also works; the tests that need SmolLM2 or the venv then skip, saying so.)
#
# With no arguments the RL gain tests (`--test rl_gain`, the longest binary: minutes of small-model
# training that leave a core idle) run beside the rest of the suite, each in its own process with
# its own thread pool, so results are as in a sequential run; its output follows the suite's.
# Arguments go to a single `cargo test --workspace` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-blas.sh
scripts/fetch-smollm2.sh
scripts/setup-openai-venv.sh || echo "the openai client's venv could not be set up: cli_openai will skip, saying so"
scripts/llama-server.sh || echo "llama-server could not be built: cli_remote's llama-server test will skip, saying so"
if [ "$#" -gt 0 ]; then
    exec cargo test --workspace "$@"
fi
cargo test --workspace --no-run
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --test rl_gain >"$log" 2>&1 &
gain=$!
rest=0
cargo test --workspace -- --skip _of_the_tiny_sft_model || rest=$?
gain_rc=0
wait "$gain" || gain_rc=$?
echo "---- cargo test --workspace --test rl_gain (run beside the rest) ----"
cat "$log"
if [ "$rest" -ne 0 ] || [ "$gain_rc" -ne 0 ]; then
    echo "FAILED: the suite exited $rest, the RL gain tests $gain_rc" >&2
    exit 1
fi
