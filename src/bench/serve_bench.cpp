#include "bench/serve_bench.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "bench/http_stream.h"
#include "bench/load_runner.h"
#include "bench/random_load.h"

namespace mpserve::bench {

using json = nlohmann::json;

namespace {

constexpr int kDefaultVocab = 128000;
constexpr size_t kMaxErrors = 5;

int vocab_of(const ServeBenchOptions& o) { return o.vocab_size > 0 ? o.vocab_size : kDefaultVocab; }

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }
double sec(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One prompt per line: plain text, or a JSON string when the line starts with '"'.
Result<std::vector<std::string>> load_prompts(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::errorf("cannot read prompts file {}", path);
  std::vector<std::string> prompts;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line.front() == '"') {
      json j = json::parse(line, nullptr, false);
      if (!j.is_string()) return Status::errorf("{}:{}: a line starting with '\"' must be one JSON string", path, lineno);
      prompts.push_back(j.get<std::string>());
    } else {
      prompts.push_back(line);
    }
  }
  if (prompts.empty()) return Status::errorf("prompts file {} holds no prompts", path);
  return prompts;
}

// The endpoint answers, and names the model when none was given.
Result<std::string> probe(const HttpEndpoint& ep, const std::string& model, double timeout_s) {
  auto timeout = std::chrono::milliseconds(static_cast<int64_t>(std::min(timeout_s, 10.0) * 1000));
  auto reply = http_get(ep, "/v1/models", timeout);
  if (!reply) return Status::errorf("cannot reach {}: {}", ep.url(), reply.error());
  if (!model.empty()) return model;
  if (reply->status != 200) {
    return Status::errorf("GET {}/v1/models answered HTTP {}; name the model with --model", ep.url(), reply->status);
  }
  json j = json::parse(reply->body, nullptr, false);
  if (j.is_object() && j.contains("data") && j["data"].is_array() && !j["data"].empty() && j["data"][0].is_object() &&
      j["data"][0].contains("id") && j["data"][0]["id"].is_string()) {
    return j["data"][0]["id"].get<std::string>();
  }
  return Status::errorf("GET {}/v1/models lists no model; name one with --model", ep.url());
}

struct Samples {
  std::vector<double> ttft, tpot, itl, e2e;
  void add(const RequestRecord& r) {
    double first = ms(r.token_events.front() - r.start);
    double total = ms(r.end - r.start);
    ttft.push_back(first);
    e2e.push_back(total);
    int64_t out = r.output_tokens();
    if (out > 1) tpot.push_back((total - first) / static_cast<double>(out - 1));
    for (size_t k = 1; k < r.token_events.size(); ++k) itl.push_back(ms(r.token_events[k] - r.token_events[k - 1]));
  }
};

ServeBenchResult aggregate(const ServeBenchOptions& o, const LoadRun& run, const std::vector<std::string>& prompts) {
  ServeBenchResult res;
  const auto& recs = run.records;
  // Prompt length when the server sent no usage: what was sent (token ids), else what the server
  // reported for the same prompt text in another request, else unknown (0).
  std::vector<int64_t> text_prompt_tokens(prompts.size(), 0);
  for (size_t i = 0; i < recs.size() && !prompts.empty(); ++i) {
    if (recs[i].prompt_tokens >= 0) text_prompt_tokens[i % prompts.size()] = recs[i].prompt_tokens;
  }
  auto prompt_tokens = [&](size_t i) -> int64_t {
    if (recs[i].prompt_tokens >= 0) return recs[i].prompt_tokens;
    return prompts.empty() ? o.input_len : text_prompt_tokens[i % prompts.size()];
  };

  std::vector<size_t> failures;
  Samples s;
  res.issued = static_cast<int64_t>(recs.size());
  if (!recs.empty()) res.issue_span_s = sec(recs.back().start - recs.front().start);
  const bool window = o.duration_s > 0;
  const Clock::time_point ws = run.t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.warmup_s));
  const Clock::time_point we = ws + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration_s));
  auto in_window = [&](Clock::time_point t) { return t >= ws && t < we; };
  Clock::time_point last_end = run.t0;

  for (size_t i = 0; i < recs.size(); ++i) {
    const RequestRecord& r = recs[i];
    last_end = std::max(last_end, r.end);
    if (r.state == RequestRecord::State::kFailed) {
      failures.push_back(i);
      if (!window || in_window(r.end)) ++res.failed;
      if (r.short_output && (!window || in_window(r.end))) ++res.short_outputs;
      continue;
    }
    if (r.state == RequestRecord::State::kCancelled) ++res.cancelled;
    if (!window) {
      if (r.state != RequestRecord::State::kCompleted) continue;
      ++res.completed;
      if (r.short_output) ++res.short_outputs;
      res.input_tokens += prompt_tokens(i);
      res.output_tokens += r.output_tokens();
      s.add(r);
      continue;
    }
    // Window mode: tokens by arrival time. One token per event; a usage count above the number of
    // events (several tokens in one event) is put on the last event, one below it trims the tail.
    bool done = r.state == RequestRecord::State::kCompleted;
    int64_t budget = done ? r.output_tokens() : static_cast<int64_t>(r.token_events.size());
    for (size_t k = 0; k < r.token_events.size() && budget > 0; ++k) {
      bool last = k + 1 == r.token_events.size();
      int64_t n = last ? budget : 1;
      budget -= n;
      if (in_window(r.token_events[k])) res.output_tokens += n;
    }
    if (!r.token_events.empty() && in_window(r.token_events.front())) res.input_tokens += prompt_tokens(i);
    if (done && in_window(r.end)) {
      ++res.completed;
      if (r.short_output) ++res.short_outputs;
      if (r.start >= ws) s.add(r);
    }
  }

  std::sort(failures.begin(), failures.end(), [&](size_t a, size_t b) { return recs[a].end < recs[b].end; });
  for (size_t k = 0; k < failures.size() && k < kMaxErrors; ++k) {
    res.first_errors.push_back(fmt::format("request {}: {}", failures[k], recs[failures[k]].error));
  }
  res.elapsed_s = window ? o.duration_s : (recs.empty() ? 0 : sec(last_end - recs.front().start));
  if (res.elapsed_s > 0) {
    res.request_throughput = static_cast<double>(res.completed) / res.elapsed_s;
    res.input_throughput = static_cast<double>(res.input_tokens) / res.elapsed_s;
    res.output_throughput = static_cast<double>(res.output_tokens) / res.elapsed_s;
  }
  res.ttft = summarize(s.ttft);
  res.tpot = summarize(s.tpot);
  res.itl = summarize(s.itl);
  res.e2e = summarize(s.e2e);
  return res;
}

json stats_json(const LatencyStats& l) {
  return {{"count", l.count}, {"mean", l.mean}, {"p50", l.p50}, {"p90", l.p90}, {"p99", l.p99}, {"max", l.max}};
}

std::string load_shape(const ServeBenchOptions& o) {
  std::string bound = o.duration_s > 0 ? fmt::format("window {:g}s after {:g}s warmup", o.duration_s, o.warmup_s)
                                       : fmt::format("{} requests", o.num_requests);
  if (o.request_rate > 0) {
    std::string cap = o.concurrency > 0 ? fmt::format(", at most {} in flight", o.concurrency) : "";
    return fmt::format("open loop, Poisson {:g} req/s (seed {}){}, {}", o.request_rate, o.seed, cap, bound);
  }
  return fmt::format("closed loop, concurrency {}, {}", o.concurrency, bound);
}

}  // namespace

Status check_serve_bench_options(const ServeBenchOptions& o) {
  if (o.prompts_file.empty() && (o.input_len < 1 || o.input_len > (1 << 20))) {
    return Status::error("--input-len must be between 1 and 1048576");
  }
  if (o.output_len < 1 || o.output_len > (1 << 20)) return Status::error("--output-len must be between 1 and 1048576");
  if (o.vocab_size < 0) return Status::error("--vocab-size must be >= 0 (0: the default, 128000)");
  if (!(o.request_rate >= 0)) return Status::error("--request-rate must be >= 0 (0: closed loop)");
  if (o.request_rate > 0 ? o.concurrency < 0 : o.concurrency < 1) {
    return Status::error(o.request_rate > 0 ? "--concurrency (the open-loop cap) must be >= 0 (0: no cap)"
                                            : "--concurrency must be at least 1 in a closed loop");
  }
  if (!(o.duration_s >= 0) || !(o.warmup_s >= 0)) return Status::error("--duration and --warmup must be >= 0");
  if (o.warmup_s > 0 && o.duration_s == 0) return Status::error("--warmup needs --duration (window mode)");
  if (o.duration_s == 0 && o.num_requests < 1) return Status::error("--num-requests must be at least 1");
  if (!(o.request_timeout_s > 0)) return Status::error("--timeout must be > 0");
  return Status::ok();
}

Result<ServeBenchResult> run_serve_bench(const ServeBenchOptions& opts, FILE* log) {
  MPS_RETURN_IF_ERROR(check_serve_bench_options(opts));
  MPS_ASSIGN_OR_RETURN(HttpEndpoint ep, parse_base_url(opts.base_url));
  ep.api_key = opts.api_key;
  std::vector<std::string> prompts;
  if (!opts.prompts_file.empty()) {
    MPS_ASSIGN_OR_RETURN(prompts, load_prompts(opts.prompts_file));
  }
  MPS_ASSIGN_OR_RETURN(std::vector<boost::asio::ip::tcp::endpoint> addrs, resolve(ep));
  MPS_ASSIGN_OR_RETURN(std::string model, probe(ep, opts.model, opts.request_timeout_s));

  LoadPlan plan;
  plan.num_requests = opts.num_requests;
  plan.concurrency = opts.concurrency;
  plan.request_rate = opts.request_rate;
  plan.warmup_s = opts.warmup_s;
  plan.duration_s = opts.duration_s;
  plan.timeout_s = opts.request_timeout_s;
  plan.expected_output = opts.output_len;
  plan.strict_output_len = opts.strict_output_len;
  plan.seed = opts.seed;
  plan.progress = opts.progress && log && isatty(fileno(log)) ? log : nullptr;

  const int vocab = vocab_of(opts);
  BodyFn body = [&](int64_t i) {
    json b{{"model", model},
           {"max_tokens", opts.output_len},
           {"temperature", 0.0},
           {"ignore_eos", true},
           {"stream", true},
           {"stream_options", {{"include_usage", true}}}};
    if (prompts.empty()) {
      b["prompt"] = random_token_prompt(opts.seed, i, opts.input_len, vocab);
    } else {
      b["prompt"] = prompts[static_cast<size_t>(i) % prompts.size()];
    }
    return b.dump();
  };
  LoadRun run = run_load(plan, ep, addrs, body);
  ServeBenchResult res = aggregate(opts, run, prompts);
  res.model = model;
  return res;
}

void print_serve_bench(const ServeBenchOptions& o, const ServeBenchResult& r, FILE* out) {
  auto line = [&](const char* k, const std::string& v) { std::fprintf(out, "%-34s %s\n", k, v.c_str()); };
  std::fprintf(out, "============ Serving benchmark ============\n");
  line("Endpoint:", o.base_url + "  model " + r.model);
  line("Load:", load_shape(o));
  line("Prompts:", o.prompts_file.empty() ? fmt::format("{} random token ids, {} output tokens (ignore_eos)",
                                                         o.input_len, o.output_len)
                                          : fmt::format("{}, {} output tokens max", o.prompts_file, o.output_len));
  line("Completed / failed requests:", fmt::format("{} / {}", r.completed, r.failed));
  if (r.short_outputs > 0) {
    line("Short outputs:", fmt::format("{} (fewer than {} tokens: the server stopped early{})", r.short_outputs,
                                       o.output_len, o.strict_output_len ? ", counted as failed" : ""));
  }
  if (r.cancelled > 0) line("Cancelled at window end:", fmt::format("{}", r.cancelled));
  line(o.duration_s > 0 ? "Window (s):" : "Duration (s):", fmt::format("{:.2f}", r.elapsed_s));
  line("Input tokens:", fmt::format("{}", r.input_tokens));
  line("Output tokens:", fmt::format("{}", r.output_tokens));
  line("Request throughput (req/s):", fmt::format("{:.2f}", r.request_throughput));
  line("Input throughput (tok/s):", fmt::format("{:.2f}", r.input_throughput));
  line("Output throughput (tok/s):", fmt::format("{:.2f}", r.output_throughput));
  std::fprintf(out, "%-10s %8s %10s %10s %10s %10s %10s\n", "(ms)", "n", "mean", "p50", "p90", "p99", "max");
  auto row = [&](const char* name, const LatencyStats& l) {
    std::fprintf(out, "%-10s %8lld %10.2f %10.2f %10.2f %10.2f %10.2f\n", name, static_cast<long long>(l.count), l.mean,
                 l.p50, l.p90, l.p99, l.max);
  };
  row("TTFT", r.ttft);
  row("TPOT", r.tpot);
  row("ITL", r.itl);
  row("E2E", r.e2e);
  if (!r.first_errors.empty()) {
    std::fprintf(out, "First errors:\n");
    for (const auto& e : r.first_errors) std::fprintf(out, "  %s\n", e.c_str());
  }
  std::fprintf(out,
               "bench_serve: model=%s completed=%lld failed=%lld elapsed_s=%.3f req_s=%.3f in_tok_s=%.2f "
               "out_tok_s=%.2f ttft_p50_ms=%.2f ttft_p99_ms=%.2f tpot_p50_ms=%.3f itl_p50_ms=%.3f e2e_p50_ms=%.2f\n",
               r.model.c_str(), static_cast<long long>(r.completed), static_cast<long long>(r.failed), r.elapsed_s,
               r.request_throughput, r.input_throughput, r.output_throughput, r.ttft.p50, r.ttft.p99, r.tpot.p50,
               r.itl.p50, r.e2e.p50);
}

std::string serve_bench_json(const ServeBenchOptions& o, const ServeBenchResult& r) {
  json options{{"base_url", o.base_url},
               {"model", o.model},
               {"api_key_set", !o.api_key.empty()},
               {"input_len", o.input_len},
               {"output_len", o.output_len},
               {"vocab_size", vocab_of(o)},
               {"prompts_file", o.prompts_file},
               {"strict_output_len", o.strict_output_len},
               {"num_requests", o.num_requests},
               {"concurrency", o.concurrency},
               {"request_rate", o.request_rate},
               {"warmup_s", o.warmup_s},
               {"duration_s", o.duration_s},
               {"request_timeout_s", o.request_timeout_s},
               {"seed", o.seed},
               {"mode", o.duration_s > 0 ? "window" : "count"},
               {"load", o.request_rate > 0 ? "open" : "closed"}};
  json results{{"model", r.model},
               {"elapsed_s", r.elapsed_s},
               {"completed", r.completed},
               {"failed", r.failed},
               {"short_outputs", r.short_outputs},
               {"cancelled", r.cancelled},
               {"issued", r.issued},
               {"issue_span_s", r.issue_span_s},
               {"first_errors", r.first_errors},
               {"input_tokens", r.input_tokens},
               {"output_tokens", r.output_tokens},
               {"request_throughput", r.request_throughput},
               {"input_throughput", r.input_throughput},
               {"output_throughput", r.output_throughput},
               {"ttft_ms", stats_json(r.ttft)},
               {"tpot_ms", stats_json(r.tpot)},
               {"itl_ms", stats_json(r.itl)},
               {"e2e_ms", stats_json(r.e2e)}};
  return json{{"options", options}, {"results", results}}.dump(2) + "\n";
}

}  // namespace mpserve::bench
