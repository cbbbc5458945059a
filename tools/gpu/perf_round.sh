#!/usr/bin/env bash
# One GPU-machine pass over the CUDA backend's correctness and speed (builds nothing there):
# the CUDA tests, the kernel micro-benchmarks, then `mpserve bench offline` rows chosen by the
# environment, each optionally under several settings of the backend's A/B variables.
# Usage: OUT=... tools/gpu/perf_round.sh [PACK_DIR]   (default gpu-pack, from tools/gpu/pack.sh)
# Environment:
#   STEPS        which parts run, in order (default "tests kbench offline"); "hostbench" runs the
#                engine's host cost per decode step without a device (EngineHostBench, test_engine),
#                to compare this machine's host with the development machine's
#   KBENCH       gtest filter of the disabled kernel benches (default '*Bench*')
#   MODELS       models for the offline rows (default "0.5b 3b")
#   ROWS         offline rows, ';'-separated "batch:input:output" (default "1:2048:8;1:512:64"); as in
#                bench_offline.sh, output grows by batch * input / 2048 (the chunked-prefill steps), so
#                that `output` decode steps of the whole batch follow the longest prefill
#   VARIANTS     ';'-separated env settings, each run for every row (default "" = one plain run),
#                e.g. "MPSERVE_CUDA_PDL=0;MPSERVE_CUDA_PDL=1"; a variant "bin:NAME" runs PACK_DIR/NAME
#                instead of PACK_DIR/mpserve (A/B of two builds on one machine, e.g. a baseline
#                binary copied into the pack as mpserve_base); a variant "args:FLAGS" adds FLAGS to the
#                bench command line (e.g. "args:--async-scheduling")
#   ARGS         extra bench flags for every variant (e.g. "--async-scheduling"; default none)
#   REPEATS      bench repeats (default 3); PROFILE=1 adds a --profile pass of the first row
#   MODEL_ROOT   where the random models are made (default /tmp/mpserve-models)
# Every bench line goes to $OUT/offline.log prefixed by "model variant"; a table ends the output.
set -uo pipefail
PACK=${1:-gpu-pack}
OUT=${OUT:-/tmp/perf-round}
STEPS=${STEPS:-"tests kbench offline"}
KBENCH=${KBENCH:-'*Bench*'}
MODELS=${MODELS:-"0.5b 3b"}
ROWS=${ROWS:-"1:2048:8;1:512:64"}
VARIANTS=${VARIANTS:-""}
REPEATS=${REPEATS:-3}
MODEL_ROOT=${MODEL_ROOT:-/tmp/mpserve-models}
BIN="$PACK/mpserve"
mkdir -p "$OUT" "$MODEL_ROOT"
[[ -x "$BIN" ]] || { echo "no $BIN: run tools/gpu/pack.sh BUILD_DIR here first" >&2; exit 2; }
stamp() { echo "== $(date +%T) $*"; }

{
  echo "pack revision: $(cat "$PACK/REVISION" 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvcc --version 2>/dev/null | tail -1
} 2>&1 | tee "$OUT/env.txt"

for step in $STEPS; do
  case $step in
    tests)
      stamp tests
      OUT="$OUT/tests" bash "$(dirname "$0")/run_cuda_tests.sh" "$PACK" 2>&1 | tail -45
      ;;
    kbench)
      stamp "kernel benches $KBENCH"
      "$PACK/test_cuda" --gtest_also_run_disabled_tests --gtest_filter="$KBENCH" >"$OUT/kbench.log" 2>&1
      echo "kbench exit $?"
      grep '^BENCH' "$OUT/kbench.log"
      ;;
    hostbench)
      stamp "engine host bench"
      MPSERVE_TOKENIZER_DIR="$PWD/$PACK/share/mpserve/tokenizer" "$PACK/test_engine" --gtest_also_run_disabled_tests \
        --gtest_filter='*EngineHostBench*' >"$OUT/hostbench.log" 2>&1
      echo "hostbench exit $?"
      grep '^BENCH' "$OUT/hostbench.log"
      ;;
    offline)
      IFS=';' read -r -a rows <<<"$ROWS"
      IFS=';' read -r -a variants <<<"${VARIANTS:-plain}"
      for m in $MODELS; do
        dir="$MODEL_ROOT/qwen2.5-$m"
        if [[ ! -f "$dir/config.json" ]]; then
          stamp "make-model $m"
          "$BIN" make-model --shape "qwen2.5-$m" --out "$dir" --tokenizer-dir "$PACK/share/mpserve/tokenizer" \
            >>"$OUT/make_model.log" 2>&1 || { echo "make-model $m failed"; continue; }
        fi
        for row in "${rows[@]}"; do
          IFS=: read -r b in olen <<<"$row"
          olen=$(( olen + b * in / 2048 ))
          for v in "${variants[@]}"; do
            stamp "bench $m b=$b in=$in out=$olen [$v]"
            bin=$BIN envs=${v/plain/} args=${ARGS:-}
            if [[ $v == bin:* ]]; then bin="$PACK/${v#bin:}" envs=""; fi
            if [[ $v == args:* ]]; then args="${ARGS:-} ${v#args:}" envs=""; fi
            # shellcheck disable=SC2086
            env $envs "$bin" bench offline --model "$dir" --device cuda --max-num-seqs 256 \
              --max-num-batched-tokens 2048 --max-model-len $((in + olen + 16)) --batch "$b" --input-len "$in" \
              --output-len "$olen" --repeats "$REPEATS" --warmup 1 $args >"$OUT/run.log" 2>&1 || echo "bench failed"
            grep -E '^(bench_offline|ceilings):' "$OUT/run.log" | sed "s|^|$m [$v] |" | tee -a "$OUT/offline.log"
            cat "$OUT/run.log" >>"$OUT/offline_full.log"
          done
        done
        if [[ ${PROFILE:-0} == 1 ]]; then
          IFS=: read -r b in olen <<<"${rows[0]}"
          olen=$(( olen + b * in / 2048 ))
          "$BIN" bench offline --model "$dir" --device cuda --max-num-seqs 256 --max-num-batched-tokens 2048 \
            --max-model-len $((in + olen + 16)) --batch "$b" --input-len "$in" --output-len "$olen" --repeats 1 \
            --warmup 1 --profile >"$OUT/profile_$m.log" 2>&1 || echo "profile $m failed"
          grep -iE 'kernel|attention|gemm|gemv|total' "$OUT/profile_$m.log" | head -30
        fi
      done
      ;;
    *) echo "unknown step $step" ;;
  esac
done

echo
printf '%-5s %-26s %5s %5s | %10s %8s | %10s %8s %6s %6s %6s\n' model variant batch in prefill_t/s pf_peak decode_t/s \
  step_ms host% roof comp
grep '^.* bench_offline:' "$OUT/offline.log" 2>/dev/null | while read -r line; do
  get() { sed -nE "s/.* $1=([^ ]+).*/\1/p" <<<"$line"; }
  m=${line%% *}
  v=$(sed -nE 's/^[^ ]+ \[([^]]*)\].*/\1/p' <<<"$line")
  hf=$(get host_frac); [[ $hf != n/a && -n $hf ]] && hf=$(awk -v x="$hf" 'BEGIN{printf "%.1f", 100*x}')
  printf '%-5s %-26s %5s %5s | %10s %8s | %10s %8s %6s %6s %6s\n' "$m" "$v" "$(get batch)" "$(get input_len)" \
    "$(get prefill_tok_s)" "$(get prefill_peak_frac)" "$(get decode_tok_s)" "$(get decode_step_ms)" "$hf" \
    "$(get decode_roofline_frac)" "$(get decode_compute_frac)"
done
