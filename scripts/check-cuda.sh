#!/usr/bin/env bash
# Builds the CUDA path (`--features cuda`) on a machine without a GPU, so a break there shows up:
# nvcc, the CUDA headers and libraries come from the Python registry's NVIDIA wheels in a
# project-local venv (.venv-cuda, gitignored), assembled into one CUDA_HOME; candle's kernels are
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
        "nvidia-cuda-nvcc-cu12==12.9.*" "nvidia-cuda-runtime-cu12==12.9.*" "nvidia-cublas-cu12==12.9.*" \
        "nvidia-curand-cu12" "nvidia-cuda-cccl-cu12==12.9.*"
fi
site=$("$venv/bin/python" -c 'import nvidia, os; print(list(nvidia.__path__)[0])')
home="$(pwd)/$venv/cuda-home"
rm -rf "$home"
mkdir -p "$home/include" "$home/lib64"
ln -s "$site/cuda_nvcc/bin" "$home/bin"
[ -d "$site/cuda_nvcc/nvvm" ] && ln -s "$site/cuda_nvcc/nvvm" "$home/nvvm"
for pkg in "$site"/*/; do
    [ -d "$pkg/include" ] && cp -rs "$pkg/include/." "$home/include/" 2>/dev/null || true
    [ -d "$pkg/lib" ] && cp -rs "$pkg/lib/." "$home/lib64/" 2>/dev/null || true
done
# Unversioned names for the linker.
for f in "$home"/lib64/lib*.so.*; do
    base="${f%%.so.*}.so"
    [ -e "$base" ] || ln -s "$(basename "$f")" "$base"
done
export CUDA_HOME="$home" CUDA_PATH="$home" CUDA_ROOT="$home" PATH="$home/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export LIBRARY_PATH="$home/lib64:${LIBRARY_PATH:-}" LD_LIBRARY_PATH="$home/lib64:${LD_LIBRARY_PATH:-}"
nvcc --version | tail -2
cargo check --workspace --all-targets --features temper/cuda --target-dir target/cuda
echo "the CUDA path type-checks, candle's kernels compiled for compute capability $CUDA_COMPUTE_CAP"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    cargo test -p tempering-model --features cuda --target-dir target/cuda
fi
