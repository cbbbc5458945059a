// `mpserve bench serve`: a load generator against any OpenAI-compatible endpoint (ours, the
// router, vLLM). Streams every request (SSE) and times each token as it arrives.
//
// Two ways to bound a run:
//  - count: `num_requests` requests (closed loop with `concurrency` in flight, or open loop at
//    `request_rate` req/s with Poisson arrivals); every request is measured, elapsed_s runs from
//    the first request's start to the last one's end.
//  - window (`duration_s` > 0): closed loop (or open loop when request_rate > 0) for warmup_s +
//    duration_s seconds; throughput counts only tokens whose arrival falls inside the measurement
//    window [warmup_s, warmup_s+duration_s), which is what the study uses (saturated, steady
//    state), and elapsed_s is duration_s. At the window's end the requests still in flight are
//    cancelled (counted in `cancelled`, neither completed nor failed; their in-window tokens do
//    count). completed/failed count requests that ended inside the window; latencies come from
//    requests that started and completed inside it.
//
// Token accounting: an SSE event with a non-empty `choices` list carries tokens. A request's output
// tokens are usage.completion_tokens when the server sends usage, else its number of such events;
// in window mode each event counts one token and a usage surplus lands on the last event. Input
// tokens are usage.prompt_tokens, else the prompt length sent (token-id prompts).
//
// Failure accounting: connect errors, timeouts, non-2xx replies, `{"error":...}` events, streams
// that end without `data: [DONE]` and streams without a token are failed requests (the first 5
// messages are kept); their tokens are not counted. A request that completes with fewer tokens
// than output_len (the server ignored ignore_eos, or a stop condition hit) is counted as
// completed, like vLLM's benchmark does, and reported in `short_outputs`; `strict_output_len`
// makes it a failure instead. An endpoint that cannot be reached at start (GET /v1/models) is an
// error of run_serve_bench, not a run of failed requests.
//
// The request is POST /v1/completions with stream=true, stream_options.include_usage=true,
// max_tokens=output_len, ignore_eos=true, temperature=0. min_tokens is not sent: our server
// rejects it and ignore_eos already fixes the output length on servers that honor it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "bench/latency_stats.h"
#include "common/status.h"

namespace mpserve::bench {

struct ServeBenchOptions {
  std::string base_url = "http://127.0.0.1:8000";  // http only; "/v1/completions" is appended
  std::string model;                  // "" = first id from GET /v1/models
  std::string api_key;                // sent as "Authorization: Bearer" when set
  // Prompts: random token ids of exactly input_len tokens (seeded), sent as a token-id array,
  // unless prompts_file is set (one prompt per line, plain text or a JSON string).
  int input_len = 128;
  int output_len = 128;               // max_tokens, with ignore_eos=true
  // 0 = 128000: below every special token of both Llama 3 (128000+) and Qwen2.x (151643+) vocabularies.
  int vocab_size = 0;                 // ids drawn from [0, vocab_size)
  std::string prompts_file;
  bool strict_output_len = false;     // a completion shorter than output_len counts as failed
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

struct ServeBenchResult {
  std::string model;
  double elapsed_s = 0;               // the measured span (window length in window mode)
  int64_t completed = 0;              // requests that finished with all their tokens
  int64_t failed = 0;                 // transport errors, non-2xx, error events, cut-off streams
  int64_t short_outputs = 0;          // completed with fewer than output_len tokens (failed if strict)
  int64_t cancelled = 0;              // window mode: in flight at the window's end
  int64_t issued = 0;                 // requests started over the whole run (warmup included)
  double issue_span_s = 0;            // first request start to last request start
  std::vector<std::string> first_errors;  // up to 5, for the report
  int64_t input_tokens = 0;           // counted from the server's usage when present, else sent
  int64_t output_tokens = 0;
  double request_throughput = 0;      // completed / elapsed_s
  double input_throughput = 0;        // tokens/s
  double output_throughput = 0;       // tokens/s
  LatencyStats ttft, tpot, itl, e2e;
};

// Checks option values and combinations; messages name the CLI flags.
Status check_serve_bench_options(const ServeBenchOptions& opts);

// Runs the benchmark; errors only for unusable options or an endpoint that cannot be reached
// at all (failed requests are counted, not fatal). `log` gets the progress bar (may be null).
Result<ServeBenchResult> run_serve_bench(const ServeBenchOptions& opts, FILE* log);

// Human summary table and the --json form.
void print_serve_bench(const ServeBenchOptions& opts, const ServeBenchResult& r, FILE* out);
std::string serve_bench_json(const ServeBenchOptions& opts, const ServeBenchResult& r);

}  // namespace mpserve::bench
