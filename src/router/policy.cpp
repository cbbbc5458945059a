#include "router/policy.h"

#include <algorithm>

namespace mpserve::router {

Result<PolicyKind> parse_policy(const std::string& name) {
  if (name == "round-robin") return PolicyKind::kRoundRobin;
  if (name == "least-requests") return PolicyKind::kLeastRequests;
  if (name == "least-tokens") return PolicyKind::kLeastTokens;
  if (name == "prefix-affinity") return PolicyKind::kPrefixAffinity;
  return Status::errorf("unknown policy '{}' (round-robin | least-requests | least-tokens | prefix-affinity)", name);
}

const char* policy_name(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::kRoundRobin: return "round-robin";
    case PolicyKind::kLeastRequests: return "least-requests";
    case PolicyKind::kLeastTokens: return "least-tokens";
    case PolicyKind::kPrefixAffinity: return "prefix-affinity";
  }
  return "?";
}

uint64_t stable_hash(std::string_view data, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ (seed * 0x9e3779b97f4a7c15ull);
  for (unsigned char c : data) {
    h ^= c;
    h *= 1099511628211ull;
  }
  // note: splitmix64 finalizer; FNV alone leaves the high bits of short inputs poorly mixed.
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

std::optional<size_t> Policy::choose(const std::vector<EngineLoad>& loads, std::string_view prompt_prefix,
                                     const std::vector<size_t>& exclude) {
  auto usable = [&](size_t i) {
    return loads[i].available && std::find(exclude.begin(), exclude.end(), i) == exclude.end();
  };
  const size_t n = loads.size();
  if (n == 0) return std::nullopt;

  switch (kind_) {
    case PolicyKind::kRoundRobin: {
      uint64_t start = next_.fetch_add(1, std::memory_order_relaxed);
      for (size_t k = 0; k < n; ++k) {
        size_t i = (start + k) % n;
        if (usable(i)) return i;
      }
      return std::nullopt;
    }
    case PolicyKind::kLeastRequests:
    case PolicyKind::kLeastTokens: {
      // Ties go round-robin, so an idle pool still spreads requests.
      uint64_t start = next_.fetch_add(1, std::memory_order_relaxed);
      std::optional<size_t> best;
      int64_t best_load = 0;
      for (size_t k = 0; k < n; ++k) {
        size_t i = (start + k) % n;
        if (!usable(i)) continue;
        int64_t load = kind_ == PolicyKind::kLeastRequests ? loads[i].outstanding_requests : loads[i].outstanding_tokens;
        if (!best || load < best_load) {
          best = i;
          best_load = load;
        }
      }
      return best;
    }
    case PolicyKind::kPrefixAffinity: {
      // note: rendezvous (highest-random-weight) hashing: each engine scores hash(prefix, engine id) and the
      // highest wins. Taking an engine out moves only its own keys; the others keep their engine.
      uint64_t key = stable_hash(prompt_prefix.substr(0, kAffinityPrefixBytes));
      std::optional<size_t> best;
      uint64_t best_score = 0;
      for (size_t i = 0; i < n; ++i) {
        if (!usable(i)) continue;
        uint64_t score = stable_hash(loads[i].id, key);
        if (!best || score > best_score) {
          best = i;
          best_score = score;
        }
      }
      return best;
    }
  }
  return std::nullopt;
}

}  // namespace mpserve::router
