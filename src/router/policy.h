// Load-balancing policies: which engine gets the next request. Pure logic, no I/O.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace mpserve::router {

enum class PolicyKind { kRoundRobin, kLeastRequests, kLeastTokens, kPrefixAffinity };

Result<PolicyKind> parse_policy(const std::string& name);
const char* policy_name(PolicyKind kind);

// What a policy may see of one engine when it decides.
struct EngineLoad {
  // Stable identity (its URL): prefix affinity hashes on it, so keys stay put when others come and go.
  std::string id;
  bool available = false;
  int64_t outstanding_requests = 0;
  // Prompt-length estimate plus max_tokens of every request in flight on this engine.
  int64_t outstanding_tokens = 0;
};

// Bytes of the prompt's start that prefix affinity hashes: long enough to separate system prompts,
// short enough that requests sharing a cached prefix land together.
inline constexpr size_t kAffinityPrefixBytes = 256;

class Policy {
 public:
  explicit Policy(PolicyKind kind) : kind_(kind) {}
  PolicyKind kind() const { return kind_; }

  // Index into `loads` of the engine to use, skipping unavailable ones and those in `exclude`
  // (engines that already failed this request); nullopt when none is left.
  std::optional<size_t> choose(const std::vector<EngineLoad>& loads, std::string_view prompt_prefix,
                               const std::vector<size_t>& exclude);

 private:
  PolicyKind kind_;
  std::atomic<uint64_t> next_{0};
};

// 64-bit FNV-1a followed by a mix, so rendezvous weights of similar ids are independent.
uint64_t stable_hash(std::string_view data, uint64_t seed = 0);

}  // namespace mpserve::router
