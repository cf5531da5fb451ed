#!/usr/bin/env bash
# Scale check (issue 15): hf-expand grow on a random-weight Llama-3-8B-shape bf16 checkpoint
# (32 -> 40 layers), timed with /usr/bin/time -v and sampled by the harness's memwatch.py
# (anonymous RSS = tensors the tool really holds), then a --dry-run plan for a Llama-3-70B-shape
# config-only folder (no weights).  The multi-GB folders are deleted at the end (also on failure).
#
# usage (from anywhere; runs from the project root):
#   bash benchmarks/bench_scale_8b.sh [extra hf-expand grow flags...]
#   e.g.  bash benchmarks/bench_scale_8b.sh --quiet
#   (extra flags go to both the 8B grow and the 70B --dry-run, so explicit --placement indices,
#   valid for 40 layers, would be rejected by the 88-layer dry run)
#
# environment (all optional):
#   WORK        scratch folder (default /work/bench-work/scale8b).  Needs ~40 GB free:
#               base ~16 GB + grown ~19.5 GB (bf16).  Logs stay in $WORK/logs.
#   BENCH_VENV  venv with torch==2.13.0 (CPU) + transformers, used for make_model.py, memwatch.py and
#               the 70B config (default /work/bench-venv)
#   HARNESS     harness folder (default /work/shared/bench)
#   KEEP=1      keep the 8B base and grown folders (default: delete them at exit)
# Memory: make_model.py peaks at about one bf16 copy (~15 GiB).  A grow that holds the whole model
# in fp32 needs ~30+ GiB and will be OOM-killed on a 23 GiB machine (reported as signal 9 below).
# Needs /usr/bin/time (apt-get install -y time).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

WORK=${WORK:-/work/bench-work/scale8b}
BENCH_VENV=${BENCH_VENV:-/work/bench-venv}
HARNESS=${HARNESS:-/work/shared/bench}
PY=$BENCH_VENV/bin/python
HX=.venv/bin/hf-expand
TIME=/usr/bin/time

[ -x "$TIME" ] || { echo "missing /usr/bin/time (apt-get install -y time)" >&2; exit 1; }
[ -x "$PY" ] || { echo "missing $PY (python3 -m venv $BENCH_VENV && $BENCH_VENV/bin/pip install torch==2.13.0 mergekit==0.1.5 transformers)" >&2; exit 1; }
[ -x "$HX" ] || { echo "missing $ROOT/$HX" >&2; exit 1; }

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
LOG=$WORK/logs
SRC=$WORK/base8b
DST=$WORK/grown8b
CFG70=$WORK/cfg70b
mkdir -p "$LOG"

cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    rm -rf "${SRC:?}" "${DST:?}"
    echo "deleted $SRC $DST (KEEP=1 keeps them)"
  fi
}
trap cleanup EXIT

rm -rf "$DST"   # hf-expand refuses an existing --out
need_gb=$([ -f "$SRC/.complete" ] && echo 22 || echo 40)
free_gb=$(df -P -BG "$WORK" | awk 'NR==2{gsub("G","",$4); print $4}')
[ "$free_gb" -ge "$need_gb" ] || { echo "only ${free_gb} GB free under $WORK, need ~${need_gb} GB" >&2; exit 1; }
echo "WORK=$WORK | nproc $(nproc) | $(free -g | awk '/^Mem:/{print $2" GiB RAM, "$7" GiB available"}') | ${free_gb} GB disk free"

gib() { awk -v kb="$1" 'BEGIN{printf "%.2f", kb/1024/1024}'; }
field() { sed -n "s/.*$1: //p" "$2" | head -1; }

# ---------------------------------------------------------------- 1. 8B-shape base (bf16, random)
if [ -f "$SRC/.complete" ]; then
  echo "reusing $SRC"
else
  rm -rf "$SRC"
  echo "building Llama-3-8B-shape base in $SRC ..."
  "$TIME" -v -o "$LOG/make_model.time" "$PY" "$HARNESS/make_model.py" "$SRC" \
      --hidden 4096 --intermediate 14336 --layers 32 --heads 32 --kv-heads 8 --vocab 128256 --dtype bf16 \
      > "$LOG/make_model.out" 2>&1 || { tail -5 "$LOG/make_model.out" >&2; exit 1; }
  touch "$SRC/.complete"
  echo "make_model: wall $(field 'Elapsed (wall clock) time (h:mm:ss or m:ss)' "$LOG/make_model.time")," \
       "peak RSS $(gib "$(field 'Maximum resident set size (kbytes)' "$LOG/make_model.time")") GiB;" \
       "$(tail -1 "$LOG/make_model.out" | cut -c1-200)"
fi
du -sb "$SRC" | awk '{printf "base on disk: %.2f GB\n", $1/1e9}'
cat "$SRC"/*.safetensors > /dev/null   # warm page cache, as run_all.sh does

# ---------------------------------------------------------------- 2. timed grow
echo "timing: $HX grow $SRC --out $DST --add-layers 8 $*"
rc=0
"$TIME" -v -o "$LOG/grow.time" "$PY" "$HARNESS/memwatch.py" -o "$LOG/grow.mem" -- \
    "$HX" grow "$SRC" --out "$DST" --add-layers 8 "$@" > "$LOG/grow.out" 2>&1 || rc=$?
tail -5 "$LOG/grow.out"
echo "--- hf-expand grow 8B (rc $rc; full log $LOG/grow.out)"
echo "wall:          $(field 'Elapsed (wall clock) time (h:mm:ss or m:ss)' "$LOG/grow.time") (user $(field 'User time (seconds)' "$LOG/grow.time") s, sys $(field 'System time (seconds)' "$LOG/grow.time") s)"
echo "peak RSS:      $(gib "$(field 'Maximum resident set size (kbytes)' "$LOG/grow.time")") GiB (time -v, includes mmap'ed file pages)"
if [ -s "$LOG/grow.mem" ]; then
  "$PY" - "$LOG/grow.mem" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
g = lambda kb: f"{kb / 1024 / 1024:.2f}"
print(f"peak anon RSS: {g(m['peak_anon_kb'])} GiB (memwatch, heap); peak file RSS {g(m['peak_file_kb'])} GiB; peak sum {g(m['peak_sum_kb'])} GiB")
EOF
fi
grep -E 'Command (exited|terminated)' "$LOG/grow.time" || true
[ -d "$DST" ] && du -sb "$DST" | awk '{printf "grown on disk: %.2f GB\n", $1/1e9}'

# ---------------------------------------------------------------- 3. 70B-shape dry run (config only)
rm -rf "$CFG70"
"$PY" - "$CFG70" <<'EOF'
import sys
import torch
from transformers import LlamaConfig
cfg = LlamaConfig(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                  num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=2048,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
cfg.dtype = torch.bfloat16
cfg.architectures = ["LlamaForCausalLM"]
cfg.save_pretrained(sys.argv[1])
EOF
echo "--- hf-expand grow --dry-run, Llama-3-70B shape (config only: $CFG70)"
# the plan lists every tensor (~700 lines at 70B): the summary is printed, the whole plan is logged
rc70=0
t0=$(date +%s.%N)
"$HX" grow "$CFG70" --add-layers 8 "$@" --dry-run > "$LOG/dryrun70b.out" 2>&1 || rc70=$?
t1=$(date +%s.%N)
grep -v '^  model\.' "$LOG/dryrun70b.out" || true
awk -v a="$t0" -v b="$t1" 'BEGIN{printf "dry run: %.1f s, rc '"$rc70"'\n", b-a}'
echo "full plan ($(wc -l < "$LOG/dryrun70b.out") lines): $LOG/dryrun70b.out"

[ "$rc" -eq 0 ] || exit "$rc"
exit "$rc70"
