#include "bench/sse_parser.h"

namespace mpserve::bench {

void SseParser::feed(std::string_view bytes, const OnEvent& on_event) {
  size_t start = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    char c = bytes[i];
    if (c != '\n' && c != '\r') {
      after_cr_ = false;
      continue;
    }
    bool lf_after_cr = c == '\n' && after_cr_;
    after_cr_ = c == '\r';
    if (lf_after_cr) {  // the CR already ended this line
      start = i + 1;
      continue;
    }
    if (line_.empty()) {
      line(bytes.substr(start, i - start), on_event);
    } else {
      line_.append(bytes.substr(start, i - start));
      std::string l = std::move(line_);
      line_.clear();
      line(l, on_event);
    }
    start = i + 1;
  }
  line_.append(bytes.substr(start));
}

void SseParser::finish(const OnEvent& on_event) {
  line_.clear();
  if (has_data_) line({}, on_event);
}

void SseParser::line(std::string_view l, const OnEvent& on_event) {
  if (l.empty()) {
    if (has_data_) {
      std::string ev = std::move(data_);
      data_.clear();
      has_data_ = false;
      on_event(ev);
    }
    return;
  }
  if (l.front() == ':') return;  // comment / keepalive
  size_t colon = l.find(':');
  std::string_view field = l.substr(0, colon);
  if (field != "data") return;
  std::string_view value = colon == std::string_view::npos ? std::string_view() : l.substr(colon + 1);
  if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (has_data_) data_.push_back('\n');
  data_.append(value);
  has_data_ = true;
}

}  // namespace mpserve::bench
