// Leftmost-longest literal matching of added tokens.
#include "tokenizer/added_tokens.h"

#include <algorithm>

namespace mpserve::tokenizer {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) {
  for (const AddedToken& t : tokens) {
    if (t.content.empty()) continue;
    by_first_byte_[static_cast<uint8_t>(t.content[0])].push_back({t.content, t.id, t.lstrip, t.rstrip});
    any_ = true;
  }
  for (auto& list : by_first_byte_) {
    std::stable_sort(list.begin(), list.end(),
                     [](const Candidate& a, const Candidate& b) { return a.content.size() > b.content.size(); });
  }
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>* out) const {
  size_t plain_begin = 0;
  size_t i = 0;
  const auto emit_plain = [&](size_t end) {
    if (end > plain_begin) out->push_back({text.substr(plain_begin, end - plain_begin), -1});
  };
  while (any_ && i < text.size()) {
    const auto& list = by_first_byte_[static_cast<uint8_t>(text[i])];
    const Candidate* hit = nullptr;
    for (const Candidate& c : list) {
      if (text.compare(i, c.content.size(), c.content) == 0) {
        hit = &c;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t begin = i, end = i + hit->content.size();
    if (hit->lstrip) {
      while (begin > plain_begin && is_space(text[begin - 1])) --begin;
    }
    if (hit->rstrip) {
      while (end < text.size() && is_space(text[end])) ++end;
    }
    emit_plain(begin);
    out->push_back({text.substr(begin, end - begin), hit->id});
    plain_begin = i = end;
  }
  emit_plain(text.size());
}

}  // namespace mpserve::tokenizer
