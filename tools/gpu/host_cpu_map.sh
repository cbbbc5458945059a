#!/usr/bin/env bash
# Which of the host-time slow mode is the CPU, which the process? Runs the CPU-only engine host bench
# (no GPU) plain, without ASLR, and pinned to each CPU, and the latency probe on each CPU.
# Then the probe 20 times in one process, and the bench and the probe back to back (does the
# probe's last-level-cache latency move with the bench's mode?). SHORT=1: only those last two.
# Usage: [SHORT=1] tools/gpu/host_cpu_map.sh  (from the repo root, with gpu-pack/test_engine and
#   gpu-pack/mem_latency)
set -u
T="env MPSERVE_TOKENIZER_DIR=$PWD/gpu-pack/share/mpserve/tokenizer gpu-pack/test_engine --gtest_also_run_disabled_tests --gtest_filter=*EngineHostBench*"
one() { "$@" $T 2>&1 | grep -E 'setting=the async=0 batch=256|setting=random_h200_pool async=0 batch=256' | grep -oE 'us_per_step=[0-9.]+' | tr '\n' ' '; echo; }
[[ ${SHORT:-0} = 1 ]] || {
echo "== plain x8"; for i in $(seq 8); do printf 'plain  '; one; done
echo "== setarch -R x8"; for i in $(seq 8); do printf 'noaslr '; one setarch -R; done
echo "== per cpu, twice"; for r in 1 2; do for c in $(seq 0 15); do printf 'cpu%-3s ' $c; one taskset -c $c; done; done
echo "== probe per cpu"; for c in $(seq 0 15); do printf 'cpu%-3s ' $c; taskset -c $c gpu-pack/mem_latency; done
}
echo "== the probe in one process, 20 repeats"; gpu-pack/mem_latency 20
echo "== bench and probe back to back, 10 times"
for i in $(seq 10); do printf 'bench  '; one; gpu-pack/mem_latency 1; done
