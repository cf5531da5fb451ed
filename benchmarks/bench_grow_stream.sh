#!/usr/bin/env bash
# Growth benchmark (issue 15): hf-expand grow vs mergekit passthrough, naive in-RAM grow and the
# copy floor, side by side on one warm page cache, using the shared harness
# (/work/shared/bench/run_all.sh; see its README.md).  22 -> 30 layers, TinyLlama-1.1B shape.
#
# usage (from anywhere; the harness runs HF_EXPAND_CMD from the project root):
#   bash benchmarks/bench_grow_stream.sh [make_model.py flags...]
#   e.g.  REPS=1 WORK=/tmp/bench-small bash benchmarks/bench_grow_stream.sh --small   # ~16M-param smoke run
#
# environment (all optional):
#   WORK          scratch folder for base model, outputs, logs (default /work/bench-work); the full-size
#                 run needs ~25-30 GB free there.  Stale outputs under it are deleted by the harness.
#   REPS          timed repetitions per method (default 3; the table shows the median)
#   BENCH_VENV    venv with torch==2.13.0 (CPU), mergekit==0.1.5, transformers (default /work/bench-venv):
#                   python3 -m venv /work/bench-venv
#                   /work/bench-venv/bin/pip install torch==2.13.0 mergekit==0.1.5 transformers
#   HARNESS       harness folder (default /work/shared/bench)
#   HF_EXPAND_CMD tool under test, {src}/{dst} placeholders (default below: 8 identity layers at the
#                 same grown-model indices as the harness's LLaMA-Pro layer map, so tensor_diff vs the
#                 naive grow is meaningful)
# extra args go to make_model.py; the layer count must stay 22 (the shipped mergekit ymls assume it).
# Needs /usr/bin/time (apt-get install -y time).  Prints $WORK/logs/results.md at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

export WORK=${WORK:-/work/bench-work}
export REPS=${REPS:-3}
BENCH_VENV=${BENCH_VENV:-/work/bench-venv}
HARNESS=${HARNESS:-/work/shared/bench}
export HF_EXPAND_CMD=${HF_EXPAND_CMD:-'.venv/bin/hf-expand grow {src} --out {dst} --add-layers 8 --placement 3,7,11,15,19,23,26,29 --quiet'}

[ -x /usr/bin/time ] || { echo "missing /usr/bin/time (apt-get install -y time)" >&2; exit 1; }
[ -x "$BENCH_VENV/bin/mergekit-yaml" ] || { echo "missing $BENCH_VENV/bin/mergekit-yaml (see the usage above)" >&2; exit 1; }
[ -x .venv/bin/hf-expand ] || { echo "missing $ROOT/.venv/bin/hf-expand (pip install -e . in .venv)" >&2; exit 1; }
[ -f "$HARNESS/run_all.sh" ] || { echo "missing $HARNESS/run_all.sh" >&2; exit 1; }

mkdir -p "$WORK"
free_gb=$(df -P -BG "$WORK" | awk 'NR==2{gsub("G","",$4); print $4}')
if [ "$#" -eq 0 ] && [ "$free_gb" -lt 30 ]; then
  echo "warning: only ${free_gb} GB free under $WORK; the full-size run writes ~25-30 GB" >&2
fi

echo "root: $ROOT | WORK=$WORK REPS=$REPS BENCH_VENV=$BENCH_VENV"
echo "HF_EXPAND_CMD=$HF_EXPAND_CMD"
rc=0
bash "$HARNESS/run_all.sh" "$BENCH_VENV" "$@" || rc=$?

if [ "$rc" -ne 0 ]; then
  # run_all.sh aborts (set -e) on the first failing method or check, before writing results.md;
  # summarize whatever was timed so far.
  echo "run_all.sh failed (rc $rc); partial table from $WORK/logs:" >&2
  "$BENCH_VENV/bin/python" "$HARNESS/summarize.py" "$WORK/logs" > "$WORK/logs/results.partial.md" 2>/dev/null \
    && cat "$WORK/logs/results.partial.md"
  exit "$rc"
fi

echo
echo "== $WORK/logs/results.md"
cat "$WORK/logs/results.md"
# the byte-level check is not in the table: tensor-by-tensor diff vs the naive grow (same layer map)
for m in hf_expand mergekit_dus; do
  [ -f "$WORK/logs/$m.tdiff.json" ] && echo "tensor_diff naive vs $m: $(cut -c1-300 "$WORK/logs/$m.tdiff.json")"
done
true
