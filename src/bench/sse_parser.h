// Server-sent events, incrementally: bytes go in as they arrive from the socket (split anywhere,
// even inside a line or a CRLF), whole events come out. Follows the HTML SSE rules the OpenAI
// servers rely on: lines end in LF, CRLF or CR; ':' starts a comment (keepalive); an event's
// `data:` lines (one optional space after the colon) are joined with '\n' and dispatched at a
// blank line. Other fields (event:, id:, retry:) are ignored: the completions API does not use them.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace mpserve::bench {

class SseParser {
 public:
  using OnEvent = std::function<void(std::string_view data)>;

  // Feeds the next bytes; calls `on_event` once per complete event that has data.
  void feed(std::string_view bytes, const OnEvent& on_event);
  // The stream ended: an event whose last data line was terminated but not followed by the blank
  // line is dispatched (lenient: some servers end a stream right after "data: [DONE]\n").
  void finish(const OnEvent& on_event);
  // Bytes held back: an unterminated line plus data lines of an undispatched event.
  size_t pending_bytes() const { return line_.size() + data_.size(); }

 private:
  void line(std::string_view l, const OnEvent& on_event);

  std::string line_;          // the current, unterminated line
  std::string data_;          // data lines of the current event, joined with '\n'
  bool has_data_ = false;
  bool after_cr_ = false;     // the last byte was CR: an LF right after it ends nothing new
};

}  // namespace mpserve::bench
