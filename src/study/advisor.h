// `mpserve advise`: should this model, at this context and workload, run as several engines
// under MPS on this GPU — and how many? Answers from the study's measured gains on the same GPU
// type (interpolated in log context and log parameter count), or from a live A/B probe.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace mpserve::study {

// One measured gain of the study: N engines vs 1 engine, same client load, one cell.
struct GainPoint {
  std::string gpu;
  std::string shape;
  double params_b = 0;      // parameter count, billions
  int context = 0;          // prompt length of the cell (tokens)
  std::string workload;     // "decode" | "prefill"
  int engines = 2;
  double median = 0;        // thr(N) / thr(1) - 1
  double lo = 0, hi = 0;    // its spread over repeats (min, max)
  std::string commit;       // the engine build that measured both cells
  std::string measured;     // UTC timestamp of the N-engine cell (ISO 8601: orders as text)
};

struct AdviceQuery {
  std::string gpu;          // must match the study's GPU name exactly
  double params_b = 0;
  int context = 0;
  std::string workload = "decode";
  double min_gain = 0.10;   // co-location must pay at least this much (it costs shared fate and memory)
};

struct EngineEstimate {
  int engines = 1;
  double gain = 0, lo = 0, hi = 0;
  std::string how;          // which measured points it came from
};

struct Advice {
  bool colocate = false;
  int engines = 1;          // the recommendation
  double gain = 0, lo = 0, hi = 0;  // of the recommended count (0 for 1 engine)
  std::string basis;        // "study" | "probe"
  std::string verdict;      // one sentence for a human
  std::vector<EngineEstimate> estimates;  // every engine count the basis covers
  std::vector<std::string> caveats;       // extrapolation, thin data, CPU-only results
};

// Interpolates the study's gains for the query. Errors when the study has no point for this GPU
// and workload (the message lists what it has and how to get the answer: `mpserve study`, --probe).
Result<Advice> advise_from_study(const std::vector<GainPoint>& points, const AdviceQuery& q);

// The decision from measured gains (one estimate per engine count > 1): the count with the best
// gain whose lower bound clears min_gain, else one engine.
Advice decide(std::vector<EngineEstimate> estimates, double min_gain, std::string basis);

std::string format_advice(const Advice& a, const AdviceQuery& q);
std::string advice_json(const Advice& a, const AdviceQuery& q);

}  // namespace mpserve::study
