#include "bench/random_load.h"

#include <cmath>

namespace mpserve::bench {

uint64_t splitmix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<int32_t> random_token_prompt(uint64_t seed, int64_t index, int len, int vocab) {
  uint64_t state = seed ^ (static_cast<uint64_t>(index) * 0xD1B54A32D192ED03ull);
  std::vector<int32_t> ids(static_cast<size_t>(len));
  // note: the modulo bias of a 64-bit draw over a vocabulary below 2^18 is < 2^-46: irrelevant.
  for (auto& id : ids) id = static_cast<int32_t>(splitmix64(&state) % static_cast<uint64_t>(vocab));
  return ids;
}

PoissonArrivals::PoissonArrivals(double rate, uint64_t seed) : rate_(rate), state_(seed ^ 0xA0761D6478BD642Full) {}

double PoissonArrivals::next_gap_s() {
  // u in (0, 1]: 53 random bits, never 0, so the log is finite.
  double u = static_cast<double>((splitmix64(&state_) >> 11) + 1) * 0x1.0p-53;
  return -std::log(u) / rate_;
}

}  // namespace mpserve::bench
