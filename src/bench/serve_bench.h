// `mpserve bench serve`: a load generator against any OpenAI-compatible endpoint (ours, the
// router, vLLM). Streams every request (SSE) and times each token as it arrives.
//
// Two ways to bound a run:
//  - count: `num_requests` requests (closed loop with `concurrency` in flight, or open loop at
//    `request_rate` req/s with Poisson arrivals); every request is measured.
//  - window (`duration_s` > 0): closed loop for warmup_s + duration_s seconds; throughput counts
//    only tokens whose arrival falls inside the measurement window [warmup_s, warmup_s+duration_s),
//    which is what the study uses (saturated, steady state). Latencies come from requests that
//    started inside the window.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace mpserve::bench {

struct ServeBenchOptions {
  std::string base_url = "http://127.0.0.1:8000";  // http only; "/v1/completions" is appended
  std::string model;                  // "" = first id from GET /v1/models
  std::string api_key;                // sent as "Authorization: Bearer" when set
  // Prompts: random token ids of exactly input_len tokens (seeded), sent as a token-id array,
  // unless prompts_file is set (one prompt per line, plain text or a JSON string).
  int input_len = 128;
  int output_len = 128;               // max_tokens, with ignore_eos=true and min_tokens=output_len
  int vocab_size = 0;                 // 0 = 151643 (Qwen's regular tokens); ids drawn from [0, vocab_size)
  std::string prompts_file;
  // Load shape.
  int num_requests = 100;             // count mode
  int concurrency = 16;               // closed loop: requests in flight (also the cap in open loop; 0 = no cap)
  double request_rate = 0;            // > 0: open loop, Poisson arrivals at this rate (req/s)
  double warmup_s = 0;                // window mode only
  double duration_s = 0;              // > 0: window mode
  double request_timeout_s = 600;
  uint64_t seed = 0;
  bool progress = true;               // progress bar on stderr (only when it is a terminal)
};

struct LatencyStats {                 // milliseconds
  int64_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

struct ServeBenchResult {
  std::string model;
  double elapsed_s = 0;               // the measured span (window length in window mode)
  int64_t completed = 0;              // requests that finished with all their tokens
  int64_t failed = 0;                 // transport errors, non-2xx, error events, short outputs
  std::vector<std::string> first_errors;  // up to 5, for the report
  int64_t input_tokens = 0;           // counted from the server's usage when present, else sent
  int64_t output_tokens = 0;
  double request_throughput = 0;      // completed / elapsed_s
  double input_throughput = 0;        // tokens/s
  double output_throughput = 0;       // tokens/s
  LatencyStats ttft, tpot, itl, e2e;
};

// Runs the benchmark; errors only for unusable options or an endpoint that cannot be reached
// at all (failed requests are counted, not fatal). `log` gets the progress bar (may be null).
Result<ServeBenchResult> run_serve_bench(const ServeBenchOptions& opts, FILE* log);

// Human summary table and the --json form.
void print_serve_bench(const ServeBenchOptions& opts, const ServeBenchResult& r, FILE* out);
std::string serve_bench_json(const ServeBenchOptions& opts, const ServeBenchResult& r);

}  // namespace mpserve::bench
