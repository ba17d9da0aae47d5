#!/usr/bin/env bash
# Creates the Python environment that regenerates Tempering's golden fixtures (fixtures/models,
# fixtures/logits, fixtures/generate, fixtures/chat). The Rust test suite never needs it.
#
# Usage: scripts/reference/setup.sh [VENV_DIR]   (default: ~/.cache/tempering/reference-venv, outside the tree)
#
# Everything runs on CPU. `pip install torch` from PyPI pulls the CUDA runtime wheels (nvidia-*, a few
# GB) even on machines without a GPU; that is expected and harmless, torch simply runs on CPU.
# llama-cpp-python is built from source (C++ compiler and CMake needed, a few minutes); it is used only
# to tokenize prompts exactly as llama.cpp does for the SmolLM2 GGUF fixtures.
set -euo pipefail

VENV="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/tempering/reference-venv}"
PYTHON="${PYTHON:-python3}"

mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
# Versions used for the committed fixtures: torch 2.15.0, transformers 5.24.0, jinja2 3.1.6, gguf 0.19.0,
# llama-cpp-python 0.3.36. The scripts need transformers 5 (`dtype=`, `rope_parameters`); other recent
# releases should reproduce the logits up to float32 rounding, and the chat fixtures exactly.
"$VENV/bin/pip" install torch "transformers>=5" safetensors numpy gguf peft sentencepiece "jinja2>=3.1.6" "sacrebleu>=2,<3"
CMAKE_ARGS="-DGGML_NATIVE=ON" "$VENV/bin/pip" install llama-cpp-python

echo "reference environment ready: $VENV"
echo "activate with: source $VENV/bin/activate"
