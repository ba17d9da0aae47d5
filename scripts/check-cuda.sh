#!/usr/bin/env bash
# Builds the CUDA path (`--features cuda`) on a machine without a GPU, so a break there shows up:
# nvcc, the CUDA headers and libraries come from the Python registry's NVIDIA CUDA 13.0 wheels (the
# CUDA 12 nvcc wheels hold ptxas but no nvcc; cudarc 0.19 knows CUDA up to 13.4) in a project-local
# venv (.venv-cuda, gitignored), which install into one tree used as CUDA_HOME; candle's kernels are
# compiled for CUDA_COMPUTE_CAP (default 80), then every crate type-checks with the feature on
# (`cargo check`, target dir target/cuda). Where a GPU answers `nvidia-smi`, tempering-model's tests
# are then built and run with the feature on.
#
#   scripts/check-cuda.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TEMPER_CUDA_VENV:-.venv-cuda}"
if ! "$venv/bin/python" -c "import nvidia" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-runtime==13.0.*" \
        "nvidia-cublas==13.0.*" "nvidia-curand" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-nvvm==13.0.*"
fi
home=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[ -x "$home/bin/nvcc" ] || { echo "no nvcc in $home/bin" >&2; exit 1; }
[ -d "$home/lib64" ] || ln -s lib "$home/lib64"
# Unversioned names for the linker.
for f in "$home"/lib/lib*.so.*; do
    base="${f%%.so.*}.so"
    [ -e "$base" ] || ln -s "$(basename "$f")" "$base"
done
export CUDA_HOME="$home" CUDA_PATH="$home" CUDA_ROOT="$home" PATH="$home/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export LIBRARY_PATH="$home/lib:${LIBRARY_PATH:-}" LD_LIBRARY_PATH="$home/lib:${LD_LIBRARY_PATH:-}"
nvcc --version | tail -2
cargo check --workspace --all-targets --features temper/cuda --target-dir target/cuda
echo "the CUDA path type-checks, candle's kernels compiled for compute capability $CUDA_COMPUTE_CAP"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    cargo test -p tempering-model --features cuda --target-dir target/cuda
fi
