#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` from the source that the `llama-cpp-python` sdist vendors (PyPI,
# fetched with `pip download --no-binary`), with cmake and ninja from PyPI too, into a cache outside
# the clone:
#   ${TEMPER_LLAMA_SERVER_DIR:-~/.cache/tempering/llama-server}/bin/llama-server
# CPU only, no web UI, no OpenSSL, no curl: it serves GGUF files on loopback for the remote-backend
# tests (crates/temper/tests/cli_remote.rs) and scripts/bench/serve.sh. Idempotent: an existing
# binary of the same build flags is kept. Prints the path.
#
# Not GGML_NATIVE: on a Sapphire Rapids VM the native build picks ggml's AMX kernels, which
# segfault in ggml_backend_amx_mul_mat at the first matrix product (the VM does not grant the AMX
# tile state); AVX2, FMA, F16C and AVX-512 are named instead.
#
# About 5.5 minutes on 2 idle cores. Run it niced if the machine is shared:
#   nice -n 19 scripts/llama-server.sh
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${TEMPER_LLAMA_SERVER_DIR:-$HOME/.cache/tempering/llama-server}"
bin="$cache/bin/llama-server"
stamp="llama-cpp-python $version, GGML_NATIVE=OFF AVX2 FMA F16C AVX512"
if [ -x "$bin" ] && [ "$(cat "$cache/VERSION" 2>/dev/null)" = "$stamp" ]; then
  echo "llama-server already at $bin"
  exit 0
fi
jobs="${JOBS:-$(nproc)}"
mkdir -p "$cache"
work="$cache/build-tmp"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

# Build tools from PyPI into a throwaway virtual environment (no system packages needed).
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check cmake ninja
export PATH="$work/venv/bin:$PATH"

# The sdist only (its build requirements come as wheels: `--no-binary :all:` would build cmake
# itself from source just to read the sdist's metadata).
"$work/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
  --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$work/sdist"
tar -xzf "$work"/sdist/llama_cpp_python-*.tar.gz -C "$work"
src="$(ls -d "$work"/llama_cpp_python-*/vendor/llama.cpp)"

start=$(date +%s)
cmake -S "$src" -B "$work/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_OPENSSL=OFF \
  -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
  >"$work/cmake.log" 2>&1 || { tail -40 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$jobs" >"$work/build.log" 2>&1 ||
  { tail -60 "$work/build.log" >&2; exit 1; }
mkdir -p "$cache/bin"
cp "$work/build/bin/llama-server" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$stamp" >"$cache/VERSION"
echo "built llama-server in $(( $(date +%s) - start ))s (cmake + build; $jobs jobs)"
echo "llama-server at $bin"
