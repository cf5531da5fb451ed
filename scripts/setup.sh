#!/usr/bin/env bash
# Create .venv and install hf_expand with its test dependencies (CPU torch, pinned so pip never pulls CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# WordNet for the synonym augmenter (Debian/Ubuntu); hf-expand copies it into NLTK's layout on first use.
if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev]"
.venv/bin/python -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
