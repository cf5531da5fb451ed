#!/usr/bin/env bash
# Create .venv and install hf_expand with its test dependencies (CPU torch, pinned so pip never pulls CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev]"
.venv/bin/python -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
