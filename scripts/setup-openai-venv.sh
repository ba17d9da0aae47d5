#!/usr/bin/env bash
# Puts the official `openai` Python client in a project-local virtual environment, .venv-openai/
# (gitignored), for the test that drives `temper serve` with it (crates/temper/tests/cli_openai.rs;
# without this venv that test skips, saying so). Idempotent; the venv's location is
# $TEMPER_OPENAI_VENV when set.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TEMPER_OPENAI_VENV:-.venv-openai}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import openai" 2>/dev/null; then
  echo "openai client already in $venv ($("$venv/bin/python" -c 'import openai; print(openai.__version__)'))"
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai>=1.40,<3"
echo "openai client in $venv ($("$venv/bin/python" -c 'import openai; print(openai.__version__)'))"
