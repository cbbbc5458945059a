# Sourced by kernel_times.sh and ncu_kernels.sh: `bench offline` of $PACK/mpserve on $MODEL at $BATCH
# sequences of $LEN prompt tokens, under Nsight Compute ($NCU) with clocks and caches left as they
# are. With chunked prefill (2048 tokens a step) the first sequences finish up to TAIL steps before
# the last, so the output length is the caller's decode steps plus TAIL.
# note: --warmup 0 and a short output keep the launches ncu intercepts few; the ceilings pass of
# bench offline runs under it too.
TAIL=$(( BATCH * LEN / 2048 ))
# ncu_decode_bench LOG DECODE_STEPS NCU_ARG...: the bench's own output goes to LOG; ncu's status is returned.
ncu_decode_bench() {
  local log=$1 steps=$2
  shift 2
  timeout "${NCU_TIMEOUT:-400}" "$NCU" --clock-control none --cache-control none "$@" \
    "$PACK/mpserve" bench offline --model "$MODEL" --device cuda --max-num-seqs $(( BATCH > 8 ? BATCH : 8 )) \
    --max-num-batched-tokens 2048 --max-model-len $(( LEN + 64 + TAIL )) --batch "$BATCH" --input-len "$LEN" \
    --output-len $(( steps + TAIL )) --repeats 1 --warmup 0 >"$log" 2>&1
}
