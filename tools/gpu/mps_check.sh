#!/usr/bin/env bash
# MPS check on the GPU machine (issue #5): the real nvidia-cuda-mps-control with 2 CUDA engines on one
# GPU behind the router; clients in get_server_list; a planted fatal fault in one engine triggers the
# coordinated recovery while a load runs through the router; no request that had not started streaming
# is lost; the daemon is gone after shutdown; router overhead against one engine addressed directly.
#
# Needs: build/mpserve built with CUDA and the engine's test-only fault flag
#   `mpserve engine --debug-fault-after-requests N` (a kernel with an illegal address after N requests).
# Usage: OUT=/some/dir tools/gpu/mps_check.sh [path/to/mpserve]
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
command -v curl >/dev/null 2>&1 || curl() { python3 "$HERE/pycurl.py" "$@"; }
BIN=$(readlink -f "${1:-build/mpserve}")
OUT=${OUT:-$PWD/mps-check-out}
GPU=${GPU:-0}
PORT=${PORT:-8190}
FAULT_AFTER=${FAULT_AFTER:-60}
mkdir -p "$OUT"
RT=$(mktemp -d /tmp/mpserve-mps-check.XXXXXX)
PIPE="$RT/mps-gpu$GPU/pipe"
LOG="$OUT/mps_check.log"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
fail=0
check() {  # check NAME CONDITION-EXIT-CODE DETAIL
  if [ "$2" = 0 ]; then say "PASS  $1  $3"; else say "FAIL  $1  $3"; fail=1; fi
}
ours() {  # pids of live processes whose environment names our runtime dir
  for e in /proc/[0-9]*/environ; do
    p=${e#/proc/}; p=${p%/environ}
    [ "$p" = $$ ] && continue
    grep -qa "$RT" "$e" 2>/dev/null && [ -d /proc/$p ] && echo "$p"
  done
}
daemon_pid() { for p in $(ours); do grep -qa "mps-control" /proc/$p/cmdline 2>/dev/null && echo "$p"; done | head -1; }
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v k="$1" '$1==k {print $2}'; }

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode --format=csv,noheader -i "$GPU"
  nvcc --version 2>/dev/null | tail -1
  echo "binary: $BIN"
  echo "command: $0 $*"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt" | tee -a "$LOG"

# Engine 0's first incarnation carries the planted fault; after the recovery it runs clean.
cat > "$RT/engine.sh" <<WRAP
#!/bin/sh
idx=\$1; shift
if [ "\$idx" = 0 ] && [ ! -e "$RT/fault-armed" ]; then
  touch "$RT/fault-armed"
  exec "$BIN" engine "\$@" --debug-fault-after-requests $FAULT_AFTER
fi
exec "$BIN" engine "\$@"
WRAP
chmod +x "$RT/engine.sh"

say "== serve: 2 CUDA engines on GPU $GPU, MPS on, runtime dir $RT"
"$BIN" serve --engines 2 --gpus "$GPU" --mps on --device cuda --port "$PORT" --runtime-dir "$RT/rt" \
  --policy least-requests --hold-timeout 120 \
  --engine-cmd "$RT/engine.sh {index} --port {port} --device cuda --gpu {gpu} --gpu-memory-fraction {memory_fraction}" \
  > "$OUT/serve.log" 2>&1 &
SERVE=$!
PIPE="$RT/rt/mps-gpu$GPU/pipe"
ok=1
for _ in $(seq 1 600); do
  n=$(curl -s "http://127.0.0.1:$PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["engines_available"])' 2>/dev/null)
  [ "$n" = 2 ] && ok=0 && break
  kill -0 $SERVE 2>/dev/null || break
  sleep 0.5
done
check "both engines ready" $ok "engines_available=${n:-?}"

# A request to each engine makes sure each has a CUDA context on the MPS server.
for i in 1 2 3 4; do curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
  -d '{"prompt":"Hello","max_tokens":4}' > /dev/null; done
SERVERS=$(echo get_server_list | CUDA_MPS_PIPE_DIRECTORY="$PIPE" nvidia-cuda-mps-control 2>&1)
say "get_server_list: $SERVERS"
test -n "$SERVERS"; check "MPS server listed" $? "servers=[$SERVERS]"
CLIENTS=$(cat "$RT/rt/mps-gpu$GPU/log/server.log" "$RT/rt/mps-gpu$GPU/log/control.log" 2>/dev/null | grep -ci "new client" || true)
test "$CLIENTS" -ge 2; check "2 clients on the MPS server" $? "server.log 'New client' lines=$CLIENTS"
D0=$(daemon_pid)
for p in $(ours); do tr '\0' '\n' < /proc/$p/environ | grep -q "CUDA_MPS_PIPE_DIRECTORY=$PIPE" && say "client env ok: pid $p ($(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-60))"; done
curl -s "http://127.0.0.1:$PORT/metrics" | grep '^mpserve_mps' | tee -a "$LOG"

say "== load through the router while engine 0 faults after $FAULT_AFTER requests"
python3 - "$PORT" > "$OUT/load.json" 2>> "$LOG" <<'PY'
import json, sys, threading, urllib.request
port = int(sys.argv[1]); N = 400
res = {"ok": 0, "mid_stream_error": 0, "lost_before_streaming": 0, "truncated_silently": 0, "errors": []}
lock = threading.Lock(); nxt = [0]
def one(i):
    stream = i % 2 == 0
    body = json.dumps({"prompt": "The GPU fault test %d" % i, "max_tokens": 16, "stream": stream}).encode()
    req = urllib.request.Request("http://127.0.0.1:%d/v1/completions" % port, data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            text = r.read().decode("utf-8", "replace")
        if not stream:
            return "ok" if "choices" in json.loads(text) else "lost_before_streaming"
        if '"error"' in text: return "mid_stream_error"
        return "ok" if "[DONE]" in text else "truncated_silently"
    except Exception as e:
        with lock: res["errors"].append(repr(e)[:200])
        return "lost_before_streaming"
def worker():
    while True:
        with lock:
            i = nxt[0]; nxt[0] += 1
        if i >= N: return
        k = one(i)
        with lock: res[k] += 1
ts = [threading.Thread(target=worker) for _ in range(16)]
[t.start() for t in ts]; [t.join() for t in ts]
res["total"] = N; res["errors"] = res["errors"][:5]
print(json.dumps(res))
PY
cat "$OUT/load.json" | tee -a "$LOG"
LOST=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["lost_before_streaming"]+d["truncated_silently"])' "$OUT/load.json" 2>/dev/null || echo 999)
test "$LOST" = 0; check "no request lost that had not started streaming" $? "$(cat "$OUT/load.json")"

for _ in $(seq 1 240); do
  R=$(metric 'mpserve_mps_recoveries_total{gpu="'$GPU'"}'); A=$(metric mpserve_router_engines_available)
  [ "${R:-0}" -ge 1 ] && [ "${A:-0}" = 2 ] && break
  sleep 0.5
done
test "${R:-0}" -ge 1; check "shared-fate recovery happened" $? "recoveries_total=${R:-0}"
test "${A:-0}" = 2; check "both engines serve again" $? "engines_available=${A:-0}"
grep -E "recovery|MPS" "$OUT/serve.log" | tee -a "$LOG"
D1=$(daemon_pid)
test -n "$D1" && test "$D0" != "$D1"; check "daemon restarted" $? "pid $D0 -> $D1"
R2=$(curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' -d '{"prompt":"after","max_tokens":4}')
echo "$R2" | grep -q choices; check "request after recovery" $? "$(echo "$R2" | cut -c1-120)"
curl -s "http://127.0.0.1:$PORT/admin/engines" > "$OUT/admin_engines.json"

say "== shutdown"
kill -TERM $SERVE
for _ in $(seq 1 120); do kill -0 $SERVE 2>/dev/null || break; sleep 0.5; done
wait $SERVE; RC=$?
check "serve exited cleanly on SIGTERM" $RC "rc=$RC"
sleep 1
LEFT=$(ours | tr '\n' ' ')
test -z "$LEFT"; check "no engine or MPS process left" $? "left=[$LEFT]"
MPSLEFT=$(pgrep -af "nvidia-cuda-mps" | grep -v pgrep || true)
say "nvidia-cuda-mps processes on the machine after shutdown: [${MPSLEFT}]"

say "== router overhead (1 CUDA engine, no MPS): direct vs through the router"
"$BIN" engine --port $((PORT+1)) --device cuda > "$OUT/overhead_engine.log" 2>&1 &
E=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$((PORT+1))/health" > /dev/null && break; sleep 0.5; done
"$BIN" router --engine "http://127.0.0.1:$((PORT+1))" --port $((PORT+2)) > "$OUT/overhead_router.log" 2>&1 &
RTR=$!
sleep 1
cat > "$RT/router_overhead.py" <<'PY'
#!/usr/bin/env python3
"""Router overhead: the same requests against one engine directly and through the router.

Prints p50/p99 latency at concurrency 1 and throughput at --concurrency, for both paths, and one
parseable summary line. Standard library only (runs on the GPU machine as is).
"""
import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request


def one(url, body):
    t0 = time.perf_counter()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
    return time.perf_counter() - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def measure(url, body, n, concurrency):
    for _ in range(5):  # warm-up
        one(url, body)
    lat = [one(url, body) for _ in range(n)]
    done = [0]
    lock = threading.Lock()
    stop_at = [0.0]

    def worker():
        while True:
            with lock:
                if done[0] >= n:
                    return
                done[0] += 1
            one(url, body)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop_at[0] = time.perf_counter() - t0
    return {"p50_ms": 1e3 * pct(lat, 50), "p99_ms": 1e3 * pct(lat, 99), "mean_ms": 1e3 * statistics.mean(lat),
            "rps": n / stop_at[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--direct", required=True, help="engine base URL")
    ap.add_argument("--router", required=True, help="router base URL (in front of that engine alone)")
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    body = json.dumps({"prompt": "Hello", "max_tokens": a.max_tokens, "temperature": 0}).encode()
    runs = {"direct": [], "router": []}
    for _ in range(a.repeats):  # interleaved, so drift hits both paths alike
        for name, url in (("direct", a.direct), ("router", a.router)):
            runs[name].append(measure(url, body, a.n, a.concurrency))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    print("| path | p50 ms | p99 ms | req/s @%d |" % a.concurrency)
    print("|---|---|---|---|")
    for name in ("direct", "router"):
        m = med[name]
        print("| %s | %.3f | %.3f | %.1f |" % (name, m["p50_ms"], m["p99_ms"], m["rps"]))
    d, r = med["direct"], med["router"]
    print("router_overhead p50_added_ms=%.3f p99_added_ms=%.3f throughput_loss_pct=%.1f n=%d repeats=%d" %
          (r["p50_ms"] - d["p50_ms"], r["p99_ms"] - d["p99_ms"], 100.0 * (1 - r["rps"] / d["rps"]), a.n, a.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
PY
python3 "$RT/router_overhead.py" --direct "http://127.0.0.1:$((PORT+1))" \
  --router "http://127.0.0.1:$((PORT+2))" -n 300 --concurrency 16 --max-tokens 1 | tee -a "$LOG" "$OUT/overhead.md"
kill -TERM $RTR $E; wait $RTR $E 2>/dev/null

cp -r "$RT/rt/logs" "$OUT/engine-logs" 2>/dev/null
cp -r "$RT/rt/mps-gpu$GPU/log" "$OUT/mps-log" 2>/dev/null
rm -rf "$RT"
say ""
say "== summary"
grep -E '^(PASS|FAIL)' "$LOG" | sed 's/^/  /'
say "result: $([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
