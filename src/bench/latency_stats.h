// Latency summaries for the load generator: mean, percentiles and max of a set of samples.
#pragma once

#include <cstdint>
#include <vector>

namespace mpserve::bench {

struct LatencyStats {                 // milliseconds
  int64_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

// The q-th percentile (q in [0, 100]) of ascending `sorted` samples, interpolated linearly between
// the two nearest ranks (numpy's default, which vLLM's benchmark reports too); 0 when empty.
double percentile(const std::vector<double>& sorted, double q);

// Sorts `samples` in place and summarizes them.
LatencyStats summarize(std::vector<double>& samples);

}  // namespace mpserve::bench
