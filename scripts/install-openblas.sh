#!/usr/bin/env bash
# Installs Debian's OpenBLAS (libopenblas0-pthread), which temper opens at run time for the CPU's
# f32 matrix products (training and prefill). Optional: without it temper runs on candle's own
# kernels and warns once. Never fails: where it cannot install, it says why in one line.
set -u
have() {
    { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q 'libopenblas\.so\.0'
}
have && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "OpenBLAS not found and no apt-get here: install OpenBLAS (libopenblas.so.0) for faster CPU training"
    exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "OpenBLAS not found; not root: run 'sudo apt-get install libopenblas0-pthread' for faster CPU training"
        exit 0
    fi
fi
install() {
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
        libopenblas0-pthread >/dev/null 2>&1
}
install || { "${SUDO[@]}" apt-get update -qq >/dev/null 2>&1 && install; } \
    || echo "OpenBLAS could not be installed: temper will use candle's slower kernels"
have && echo "installed OpenBLAS (libopenblas0-pthread)"
exit 0
