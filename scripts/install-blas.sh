#!/usr/bin/env bash
# Installs the BLAS libraries temper opens at run time for the CPU's f32 matrix products (training,
# prefill, the RL update): Debian's oneDNN (libdnnl2) and OpenBLAS (libopenblas0-pthread). Optional:
# without them temper runs on candle's own kernels and warns once. Never fails: where it cannot
# install, it says why in one line.
set -u
has() { # soname
    { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q "$1"
}
missing=()
has 'libopenblas\.so\.0' || missing+=(libopenblas0-pthread)
has 'libdnnl\.so\.2' || missing+=(libdnnl2)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get here: install ${missing[*]} (or their builds for this system) for faster CPU training"
    exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "not root: run 'sudo apt-get install ${missing[*]}' for faster CPU training"
        exit 0
    fi
fi
install() {
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null 2>&1
}
install || { "${SUDO[@]}" apt-get update -qq >/dev/null 2>&1 && install; } \
    || echo "${missing[*]} could not be installed: temper will use slower kernels"
has 'libopenblas\.so\.0' && has 'libdnnl\.so\.2' && echo "installed ${missing[*]}"
exit 0
