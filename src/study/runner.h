// `mpserve study`: the co-location study (DESIGN.md).
//
// How a study runs:
//  1. The plan: every server configuration (shape x engines x MPS x ablation x async x
//     step_cpu_us) and, for each, its cells (context x workload x repeat). A cell already in
//     OUT/results.csv (same measurement_key: every cell parameter, the repeat and the GPU name) is
//     skipped; a configuration with nothing left is not started at all. So a study can run in
//     parts, be killed, and resume.
//  2. Per configuration: make the model once (`make-model`, seed 0, cached in --models-dir), start
//     `mpserve serve` on a free port (runtime dir in $TMPDIR: MPS pipe paths must stay short),
//     wait until the router reports every engine available, then run each cell's window with the
//     in-process load generator (bench::run_serve_bench, closed loop: `concurrency` requests in
//     flight, warmup_s, then window_s measured). Each measured window is appended to results.csv
//     at once (flushed, fsync'ed). serve is stopped with SIGTERM to its group (SIGKILL after 60 s),
//     also on errors and on SIGINT/SIGTERM to the study; its log, the engine logs and the MPS logs
//     are kept in OUT/logs/<configuration>/.
//  3. report.md and the PNG plots (gnuplot) from everything in results.csv.
//
// Fair comparison: 1 and N engines get the same client concurrency and request shape; the
// router (least-requests) balances. Engines get an equal share of the card (--gpu-memory-fraction
// 0.9/N, serve's default). The 1-engine baseline runs once per (shape, ablation), MPS off.
// Throughput: decode = output tokens/s (prompt of `context` tokens, --decode-output-len tokens
// out), prefill = prompt tokens/s (1 token out).
#pragma once

#include <cstdio>

#include "study/plan.h"

namespace mpserve::study {

// Runs the study (or only the report, or only the plan). Exit code: 0 done, 1 a configuration or
// window failed (the rest still ran; results.csv holds what was measured), 130 interrupted.
int run_study(const StudyOptions& o, FILE* out);

}  // namespace mpserve::study
