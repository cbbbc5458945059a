// The seeded randomness of a load run, with our own generators so that a seed means the same
// prompts and arrival times with any standard library.
#pragma once

#include <cstdint>
#include <vector>

namespace mpserve::bench {

// SplitMix64: one step of the generator, advancing `state`.
uint64_t splitmix64(uint64_t* state);

// Request `index`'s prompt: `len` token ids uniform in [0, vocab). Depends only on (seed, index),
// so request i sends the same prompt whatever order the run issues requests in.
std::vector<int32_t> random_token_prompt(uint64_t seed, int64_t index, int len, int vocab);

// Inter-arrival gaps of a Poisson process: exponential with mean 1/rate seconds.
class PoissonArrivals {
 public:
  PoissonArrivals(double rate, uint64_t seed);
  double next_gap_s();

 private:
  double rate_;
  uint64_t state_;
};

}  // namespace mpserve::bench
