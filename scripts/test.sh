#!/usr/bin/env bash
# The whole test suite on a fresh machine: fetches SmolLM2 if absent, then runs every test.
# (Plain `cargo test` also works; the tests that need SmolLM2 then skip, saying so.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-smollm2.sh
cargo test --workspace "$@"
