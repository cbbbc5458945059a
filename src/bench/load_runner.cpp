#include "bench/load_runner.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <nlohmann/json.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "bench/random_load.h"
#include "bench/sse_parser.h"

namespace mpserve::bench {

namespace net = boost::asio;
using net::awaitable;
using json = nlohmann::json;

namespace {

Clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

std::string clip(std::string_view s, size_t n = 200) {
  return s.size() <= n ? std::string(s) : std::string(s.substr(0, n)) + "...";
}

// The message of an OpenAI-style error body, else the body's start.
std::string error_message(const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_object()) {
    auto e = j.find("error");
    if (e != j.end()) {
      if (e->is_string()) return e->get<std::string>();
      if (e->is_object()) {
        auto m = e->find("message");
        if (m != e->end() && m->is_string()) return m->get<std::string>();
      }
    }
    auto m = j.find("message");  // some servers put it at the top level
    if (m != j.end() && m->is_string()) return m->get<std::string>();
  }
  return clip(body);
}

class Runner {
 public:
  Runner(const LoadPlan& plan, const HttpEndpoint& ep, const std::vector<net::ip::tcp::endpoint>& addrs,
         const BodyFn& body)
      : plan_(plan),
        body_(body),
        client_(ioc_.get_executor(), ep, addrs),
        window_timer_(ioc_),
        arrival_timer_(ioc_),
        slot_timer_(ioc_),
        progress_timer_(ioc_) {}

  LoadRun run() {
    run_.t0 = Clock::now();
    window_mode_ = plan_.duration_s > 0;
    if (window_mode_) {
      warmup_end_ = run_.t0 + seconds(plan_.warmup_s);
      window_end_ = warmup_end_ + seconds(plan_.duration_s);
      window_timer_.expires_at(window_end_);
      window_timer_.async_wait([this](boost::system::error_code ec) {
        if (!ec) stop();
      });
    }
    if (plan_.request_rate > 0) {
      spawn(arrivals());
    } else {
      for (int i = 0; i < plan_.concurrency; ++i) spawn(worker());
    }
    if (plan_.progress) net::co_spawn(ioc_, progress_loop(), net::detached);
    ioc_.run();
    if (plan_.progress) {
      draw();
      std::fputc('\n', plan_.progress);
      std::fflush(plan_.progress);
    }
    return std::move(run_);
  }

 private:
  void spawn(awaitable<void> task) {
    ++tasks_;
    net::co_spawn(ioc_, std::move(task), [this](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);  // a bug, not a failed request: let it surface
      if (--tasks_ == 0) all_done();
    });
  }

  // Window over: in-flight requests are cancelled, nothing new starts.
  void stop() {
    stopping_ = true;
    client_.cancel_all();
    arrival_timer_.cancel();
    slot_timer_.cancel();
  }

  void all_done() {
    finished_ = true;
    window_timer_.cancel();
    progress_timer_.cancel();
    client_.close_idle();
  }

  bool claim(int64_t* index) {
    if (stopping_) return false;
    if (window_mode_ ? Clock::now() >= window_end_ : issued_ >= plan_.num_requests) return false;
    *index = issued_++;
    run_.records.emplace_back();
    return true;
  }

  awaitable<void> worker() {
    int64_t i = 0;
    net::steady_timer backoff(ioc_);
    boost::system::error_code ec;
    while (claim(&i)) {
      co_await one_request(i);
      // note: a server that refuses every request at once would otherwise spin this loop (and grow
      // the records) as fast as the CPU allows for a whole window.
      if (run_.records[static_cast<size_t>(i)].state == RequestRecord::State::kFailed) {
        backoff.expires_after(std::chrono::milliseconds(20));
        co_await backoff.async_wait(net::redirect_error(net::use_awaitable, ec));
      }
    }
  }

  awaitable<void> arrivals() {
    PoissonArrivals gaps(plan_.request_rate, plan_.seed);
    Clock::time_point next = run_.t0;
    boost::system::error_code ec;
    while (!stopping_) {
      if (Clock::now() < next) {
        arrival_timer_.expires_at(next);
        co_await arrival_timer_.async_wait(net::redirect_error(net::use_awaitable, ec));
        continue;  // re-checks stopping_ and the time (a cancel also wakes it)
      }
      while (plan_.concurrency > 0 && in_flight_ >= plan_.concurrency && !stopping_) {
        slot_timer_.expires_at(Clock::time_point::max());
        co_await slot_timer_.async_wait(net::redirect_error(net::use_awaitable, ec));
      }
      int64_t i = 0;
      if (!claim(&i)) break;
      spawn(one_request(i));
      // note: the schedule is absolute (no drift from timer latency) unless a full cap held the
      // arrival back; then the next gap counts from the late issue instead of bursting to catch up.
      next = std::max(next, Clock::now()) + seconds(gaps.next_gap_s());
    }
  }

  awaitable<void> one_request(int64_t index) {
    RequestRecord& rec = run_.records[static_cast<size_t>(index)];
    std::string body = body_(index);
    ++in_flight_;
    rec.start = Clock::now();
    SseParser sse;
    bool done = false;
    const StreamClient::OnData on_data = [&](std::string_view bytes, Clock::time_point t) {
      size_t before = rec.token_events.size();
      sse.feed(bytes, [&](std::string_view data) { apply_stream_event(data, t, &rec, &done); });
      token_events_seen_ += static_cast<int64_t>(rec.token_events.size() - before);
    };
    StreamReply reply = co_await client_.post(plan_.path, body, rec.start + seconds(plan_.timeout_s), on_data);
    rec.end = Clock::now();
    if (reply.error.empty() && !reply.cancelled) {
      sse.finish([&](std::string_view data) { apply_stream_event(data, rec.end, &rec, &done); });
    }
    classify(reply, done, &rec);
    if (rec.state == RequestRecord::State::kCompleted) ++completed_;
    if (rec.state == RequestRecord::State::kFailed) ++failed_;
    --in_flight_;
    slot_timer_.cancel();
  }

  void classify(const StreamReply& reply, bool done, RequestRecord* rec) const {
    bool finished_ok = done && rec->error.empty() && reply.error.empty() && !rec->token_events.empty();
    if (reply.cancelled && !finished_ok) {
      rec->state = RequestRecord::State::kCancelled;
      return;
    }
    std::string err;
    size_t events = rec->token_events.size();
    if (!rec->error.empty()) {
      err = rec->error;
    } else if (!reply.error.empty()) {
      err = events > 0 ? fmt::format("{} (after {} token events)", reply.error, events) : reply.error;
    } else if (reply.status / 100 != 2) {
      err = fmt::format("HTTP {}: {}", reply.status, error_message(reply.body));
    } else if (!done) {
      err = fmt::format("the stream ended without data: [DONE] (after {} token events)", events);
    } else if (events == 0) {
      err = "the stream carried no tokens";
    }
    if (err.empty() && plan_.expected_output > 0 && rec->output_tokens() < plan_.expected_output) {
      rec->short_output = true;
      if (plan_.strict_output_len) {
        err = fmt::format("short output: {} of {} tokens", rec->output_tokens(), plan_.expected_output);
      }
    }
    rec->error = err;
    rec->state = err.empty() ? RequestRecord::State::kCompleted : RequestRecord::State::kFailed;
  }

  awaitable<void> progress_loop() {
    boost::system::error_code ec;
    while (!finished_) {
      draw();
      progress_timer_.expires_after(std::chrono::milliseconds(250));
      co_await progress_timer_.async_wait(net::redirect_error(net::use_awaitable, ec));
    }
  }

  void draw() {
    constexpr int kWidth = 30;
    double elapsed = std::chrono::duration<double>(Clock::now() - run_.t0).count();
    double frac;
    std::string label;
    if (window_mode_) {
      double total = plan_.warmup_s + plan_.duration_s;
      frac = elapsed / total;
      label = fmt::format("{} {:.1f}/{:.1f}s", elapsed < plan_.warmup_s ? "warmup" : "window", std::min(elapsed, total),
                          total);
    } else {
      frac = static_cast<double>(completed_ + failed_) / static_cast<double>(plan_.num_requests);
      label = fmt::format("{}/{} requests {:.1f}s", completed_ + failed_, plan_.num_requests, elapsed);
    }
    int filled = static_cast<int>(std::clamp(frac, 0.0, 1.0) * kWidth);
    double tok_s = elapsed > 0 ? static_cast<double>(token_events_seen_) / elapsed : 0;
    std::fprintf(plan_.progress, "\r[%s%s] %s  completed %lld  failed %lld  in flight %d  ~%.0f tok/s\033[K",
                 std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(kWidth - filled), '.').c_str(), label.c_str(),
                 static_cast<long long>(completed_), static_cast<long long>(failed_), in_flight_, tok_s);
    std::fflush(plan_.progress);
  }

  const LoadPlan& plan_;
  const BodyFn& body_;
  net::io_context ioc_;
  StreamClient client_;
  net::steady_timer window_timer_;
  net::steady_timer arrival_timer_;
  // Cancelled whenever a request ends: wakes the open loop waiting for a free slot under the cap.
  net::steady_timer slot_timer_;
  net::steady_timer progress_timer_;
  LoadRun run_;
  bool window_mode_ = false;
  Clock::time_point warmup_end_, window_end_;
  bool stopping_ = false;
  bool finished_ = false;
  int tasks_ = 0;
  int in_flight_ = 0;
  int64_t issued_ = 0;
  int64_t completed_ = 0, failed_ = 0, token_events_seen_ = 0;
};

}  // namespace

void apply_stream_event(std::string_view data, Clock::time_point t, RequestRecord* rec, bool* done) {
  if (*done) return;
  if (data == "[DONE]") {
    *done = true;
    return;
  }
  json j = json::parse(data, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    if (rec->error.empty()) rec->error = "unparseable stream event: " + clip(data);
    return;
  }
  auto e = j.find("error");
  if (e != j.end() && !e->is_null()) {
    if (rec->error.empty()) rec->error = "error event: " + error_message(j.dump());
    return;
  }
  auto c = j.find("choices");
  if (c != j.end() && c->is_array() && !c->empty()) rec->token_events.push_back(t);
  auto u = j.find("usage");
  if (u != j.end() && u->is_object()) {
    auto p = u->find("prompt_tokens");
    if (p != u->end() && p->is_number_integer()) rec->prompt_tokens = p->get<int64_t>();
    auto k = u->find("completion_tokens");
    if (k != u->end() && k->is_number_integer()) rec->completion_tokens = k->get<int64_t>();
  }
}

LoadRun run_load(const LoadPlan& plan, const HttpEndpoint& ep, const std::vector<net::ip::tcp::endpoint>& addrs,
                 const BodyFn& body) {
  Runner runner(plan, ep, addrs, body);
  return runner.run();
}

}  // namespace mpserve::bench
