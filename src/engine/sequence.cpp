#include "engine/sequence.h"

#include <algorithm>
#include <utility>

namespace mpserve::engine {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

void StopStringMatcher::feed_to(std::string_view text, std::string* out, bool* stopped) {
  if (stops_.empty()) {
    *stopped = false;
    out->append(text);
    return;
  }
  out->append(feed(text, stopped));
}

std::string StopStringMatcher::feed(std::string_view text, bool* stopped) {
  *stopped = false;
  if (stopped_) return {};
  held_.append(text);
  if (stops_.empty()) return std::exchange(held_, {});

  // The earliest match wins, whichever stop string it is.
  size_t match = std::string::npos;
  for (const auto& s : stops_) match = std::min(match, held_.find(s));
  if (match != std::string::npos) {
    std::string out = held_.substr(0, match);
    held_.clear();
    stopped_ = true;
    *stopped = true;
    return out;
  }

  // Hold back the longest tail of held_ that is a proper prefix of some stop string.
  // note: released text never ends in such a prefix, so a match can only start inside held_.
  size_t keep = 0;
  for (const auto& s : stops_) {
    size_t max_len = std::min(s.size() - 1, held_.size());
    for (size_t len = max_len; len > keep; --len) {
      if (std::string_view(held_).substr(held_.size() - len) == std::string_view(s).substr(0, len)) {
        keep = len;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopStringMatcher::finish() {
  if (stopped_) return {};
  return std::exchange(held_, {});
}

Sequence::Sequence(uint64_t id_in, uint64_t arrival_in, GenerationRequest req, const tokenizer::Tokenizer& tok)
    : id(id_in),
      arrival(arrival_in),
      request(std::move(req)),
      tokens(std::move(request.prompt)),
      num_prompt_tokens(static_cast<int32_t>(tokens.size())),
      detok(tok, request.skip_special_tokens),
      stop_matcher(request.stop) {
  request.prompt.clear();
}

}  // namespace mpserve::engine
