#!/usr/bin/env bash
# Runs (or resumes) `mpserve study` on the GPU machine from a gpu-pack (builds nothing there).
# The study resumes from docs/results/study/results.csv when it exists in the carried tree, so a
# long study runs in parts, one device call each: copy $OUT/results.csv back to
# docs/results/study/ between calls, and regenerate report and plots here with
#   build/mpserve study --report-only --out docs/results/study
# Usage: tools/gpu/study.sh [PACK_DIR] -- STUDY_FLAGS...   (default pack: gpu-pack)
# Environment: STUDY_DIR (default docs/results/study), MODELS_DIR (default /tmp/mpserve-study-models),
# STUDY_TIME_LIMIT (seconds; the study is stopped with SIGINT after it, keeping what it measured),
# STUDY_COMMIT (the commit to record; the carried tree may have no .git).
set -uo pipefail
PACK=gpu-pack
if [[ $# -gt 0 && "$1" != "--" ]]; then PACK=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift
OUT=${OUT:-/tmp/study-out}
STUDY_DIR=${STUDY_DIR:-docs/results/study}
MODELS_DIR=${MODELS_DIR:-/tmp/mpserve-study-models}
LIMIT=${STUDY_TIME_LIMIT:-540}
BIN="$PACK/mpserve"
[[ -x "$BIN" ]] || { echo "no $BIN: run tools/gpu/pack.sh BUILD_DIR here first" >&2; exit 2; }
mkdir -p "$OUT" /tmp/mpserve-study
# Resume from the carried results unless an earlier run in this call already measured more.
if [[ -f "$STUDY_DIR/results.csv" && ! -f /tmp/mpserve-study/results.csv ]]; then
  cp "$STUDY_DIR/results.csv" /tmp/mpserve-study/results.csv
fi
{
  echo "pack revision: $(cat "$PACK/REVISION" 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvidia-smi | sed -n 3p
  command -v nvidia-cuda-mps-control
} >"$OUT/env.txt" 2>&1
export MPSERVE_TOKENIZER_DIR=$PWD/$PACK/share/mpserve/tokenizer
timeout -s INT -k 30 "$LIMIT" "$BIN" study --device cuda --out /tmp/mpserve-study --models-dir "$MODELS_DIR" \
  --commit "${STUDY_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" "$@" 2>&1 | tee "$OUT/study.log"
rc=${PIPESTATUS[0]}
cp /tmp/mpserve-study/results.csv "$OUT/" 2>/dev/null
tar -czf "$OUT/logs.tgz" -C /tmp/mpserve-study logs commands.txt 2>/dev/null
# Never leave an MPS daemon behind (serve quits its own; this is the belt to those braces).
pgrep -f nvidia-cuda-mps-control >/dev/null && echo "study.sh: an MPS control daemon is still running" >&2
echo "study.sh: exit $rc"
exit "$rc"
