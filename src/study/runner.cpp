#include "study/runner.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <fstream>
#include <thread>

#include <fmt/format.h>

#include "bench/serve_bench.h"
#include "common/log.h"
#include "study/model_cache.h"
#include "study/report.h"
#include "study/serve_process.h"

namespace mpserve::study {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kCpuBanner =
    "device=cpu: a CPU run says nothing about MPS (there is no GPU to share); it checks the study's "
    "machinery only";

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// SIGINT/SIGTERM while the study runs: blocked in every thread, taken by one watcher that marks the
// study interrupted and sends SIGTERM to the running serve's group (a second signal: SIGKILL), so
// the window in progress ends at once and the main thread shuts down in order.
class SignalWatcher {
 public:
  SignalWatcher() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, &old_);
    thread_ = std::thread([this] {
      timespec every{0, 200'000'000};
      int count = 0;
      while (!stop_) {
        if (sigtimedwait(&set_, nullptr, &every) <= 0) continue;
        interrupted_ = true;
        pid_t pid = serve_pid_.load();
        if (pid > 0) ::kill(-pid, ++count == 1 ? SIGTERM : SIGKILL);
      }
    });
  }
  ~SignalWatcher() {
    stop_ = true;
    thread_.join();
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  bool interrupted() const { return interrupted_; }
  void set_serve_pid(pid_t pid) { serve_pid_ = pid; }

 private:
  sigset_t set_{}, old_{};
  std::atomic<bool> stop_{false}, interrupted_{false};
  std::atomic<pid_t> serve_pid_{-1};
  std::thread thread_;
};

std::string engine_args(const StudyOptions& o, const MachineInfo& m, const ServerConfig& s) {
  std::string a = fmt::format("--max-model-len {} --max-num-seqs {} --max-num-batched-tokens {}", s.max_model_len,
                              s.max_num_seqs, o.max_num_batched_tokens);
  // The label is what remains: `attention` = MLP removed, `mlp` = attention removed.
  if (s.ablation == "attention") a += " --ablate mlp";
  if (s.ablation == "mlp") a += " --ablate attention";
  if (s.step_cpu_us > 0) a += fmt::format(" --step-cpu-us {}", s.step_cpu_us);
  if (s.async) a += " --async-scheduling";
  // CPU engines split the cores instead of each spinning a thread per core.
  if (o.device == "cpu") a += fmt::format(" --threads {}", std::max(1, m.cpu_cores / s.engines));
  return a;
}

void copy_logs(const fs::path& runtime_dir, const fs::path& dest) {
  std::error_code ec;
  fs::create_directories(dest, ec);
  for (auto it = fs::recursive_directory_iterator(runtime_dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (!it->is_regular_file() || it->path().extension() != ".log") continue;
    fs::path rel = fs::relative(it->path(), runtime_dir, ec);
    std::string flat = rel.string();
    if (flat.rfind("logs/", 0) == 0) flat.erase(0, 5);
    std::replace(flat.begin(), flat.end(), '/', '_');
    fs::copy_file(it->path(), dest / flat, fs::copy_options::overwrite_existing, ec);
  }
  fs::remove_all(runtime_dir, ec);
}

void append_line(const fs::path& path, const std::string& line) {
  std::ofstream f(path, std::ios::app);
  f << line << "\n";
}

}  // namespace

int run_study(const StudyOptions& o, FILE* out) {
  const fs::path csv = o.out_dir / "results.csv";
  std::error_code ec;
  auto existing = load_results(csv);
  if (!existing) {
    std::fprintf(stderr, "mpserve study: %s\n", existing.error().c_str());
    return 1;
  }
  if (o.report_only) {
    if (!fs::exists(csv)) {
      std::fprintf(stderr, "mpserve study: --report-only: %s does not exist\n", csv.c_str());
      return 1;
    }
    auto rep = write_report(*existing, o.out_dir);
    if (!rep) {
      std::fprintf(stderr, "mpserve study: %s\n", rep.error().c_str());
      return 1;
    }
    std::fprintf(out, "study: report %s (%zu rows, %zu plots)%s\n", rep->report.c_str(), existing->size(),
                 rep->plots.size(), rep->plot_note.empty() ? "" : ("; " + rep->plot_note).c_str());
    return 0;
  }

  const MachineInfo machine = detect_machine(o.device, o.commit);
  std::set<std::string> measured, cached;
  for (const ResultRow& r : *existing) measured.insert(measurement_key(r));
  for (const std::string& s : o.shapes) {
    if (s == o.model_label || study_model_cached(o.models_dir, s)) cached.insert(s);
  }
  if (o.cpu_overhead && study_model_cached(o.models_dir, o.cpu_overhead_shape)) cached.insert(o.cpu_overhead_shape);
  auto plan = make_plan(o, machine, measured, cached);
  if (!plan) {
    std::fprintf(stderr, "mpserve study: %s\n", plan.error().c_str());
    return 2;
  }
  std::fprintf(out, "%s", describe_plan(*plan, o, machine).c_str());
  if (o.device == "cpu") std::fprintf(out, "study: %s\n", kCpuBanner);
  std::fflush(out);
  if (o.dry_run) return 0;
  fs::create_directories(o.out_dir / "logs", ec);
  if (ec) {
    std::fprintf(stderr, "mpserve study: cannot create %s: %s\n", o.out_dir.c_str(), ec.message().c_str());
    return 1;
  }

  auto writer = ResultsWriter::open(csv);
  if (!writer) {
    std::fprintf(stderr, "mpserve study: %s\n", writer.error().c_str());
    return 1;
  }
  if (plan->cells_todo > 0) append_line(o.out_dir / "commands.txt", utc_now() + "  " + o.command_line);
  const std::string self_exe = fs::read_symlink("/proc/self/exe").string();
  const auto t_start = Clock::now();
  int measured_now = 0, failures = 0, servers_started = 0;
  SignalWatcher signals;

  for (const ServerGroup& g : plan->groups) {
    if (g.todo() == 0 || signals.interrupted()) continue;
    const std::string label = g.server.label();
    auto model_dir = !o.model_dir.empty() && g.server.shape == o.model_label
                         ? Result<fs::path>(o.model_dir)
                         : ensure_study_model(o.models_dir, g.server.shape);
    if (!model_dir) {
      std::fprintf(stderr, "mpserve study: %s: %s\n", label.c_str(), model_dir.error().c_str());
      ++failures;
      continue;
    }
    ServeSpec spec;
    spec.argv = {self_exe, "serve", "--engines", std::to_string(g.server.engines), "--mps", g.server.mps,
                 "--device", o.device, "--model", model_dir->string(), "--engine-args",
                 engine_args(o, machine, g.server), "--drain-timeout", "2", "--ready-timeout",
                 fmt::format("{}", o.ready_timeout_s)};
    spec.engines = g.server.engines;
    // note: short, because MPS pipe and socket paths below it must fit a unix socket name (108 bytes).
    spec.runtime_dir = fs::temp_directory_path() / fmt::format("mpss-{}-{}", getpid(), servers_started++);
    spec.log_file = o.out_dir / "logs" / (label + ".serve.log");
    spec.ready_timeout_s = o.ready_timeout_s + 30;
    fs::remove_all(spec.runtime_dir, ec);

    ServeProcess serve;
    std::fprintf(out, "study: starting %s (%d windows)\n", label.c_str(), g.todo());
    std::fflush(out);
    Status st = serve.start(spec);
    signals.set_serve_pid(serve.pid());
    if (!st) {
      signals.set_serve_pid(-1);
      copy_logs(spec.runtime_dir, o.out_dir / "logs" / label);
      if (signals.interrupted()) break;
      std::fprintf(stderr, "mpserve study: %s: %s\n", label.c_str(), st.message().c_str());
      append_line(o.out_dir / "logs" / "problems.txt", label + ": " + st.message());
      ++failures;
      continue;
    }
    for (const Cell& c : g.cells) {
      if (c.measured) continue;
      if (!serve.exited().empty()) {
        std::fprintf(stderr, "mpserve study: %s: serve exited (%s) mid-study\n", label.c_str(), serve.exited().c_str());
        ++failures;
        break;
      }
      bench::ServeBenchOptions b;
      b.base_url = fmt::format("http://127.0.0.1:{}", serve.port());
      b.input_len = c.row.input_len;
      b.output_len = c.row.output_len;
      b.concurrency = c.row.concurrency;
      b.warmup_s = o.warmup_s;
      b.duration_s = o.window_s;
      b.request_timeout_s = std::max(120.0, 4 * (o.warmup_s + o.window_s));
      b.seed = static_cast<uint64_t>(c.row.repeat) * 1'000'003 + static_cast<uint64_t>(c.row.context);
      b.progress = false;
      auto r = bench::run_serve_bench(b, nullptr);
      if (signals.interrupted()) break;
      if (!r) {
        std::fprintf(stderr, "mpserve study: %s context %d %s: %s\n", label.c_str(), c.row.context,
                     c.row.workload.c_str(), r.error().c_str());
        ++failures;
        break;
      }
      if (r->failed > 0 || (r->output_tokens == 0 && r->input_tokens == 0)) {
        // A window with failed requests measured the failure, not the configuration, and one in
        // which no token arrived measured nothing: neither is recorded (a resumed study measures
        // it again) and the study ends with exit 1. (Long prompts on a large model may finish no
        // request inside a short window; their in-window tokens still count.)
        std::string msg = fmt::format("context {} {} repeat {}: {} completed, {} failed{}{}", c.row.context,
                                      c.row.workload, c.row.repeat, r->completed, r->failed,
                                      r->first_errors.empty() ? "" : "; first error: ",
                                      r->first_errors.empty() ? "" : r->first_errors.front().substr(0, 300));
        std::fprintf(stderr, "mpserve study: %s %s (not recorded)\n", label.c_str(), msg.c_str());
        append_line(o.out_dir / "logs" / "problems.txt", label + ": " + msg);
        ++failures;
        continue;
      }
      ResultRow row = c.row;
      row.timestamp = utc_now();
      row.completed = r->completed;
      row.failed = r->failed;
      row.input_tok_s = r->input_throughput;
      row.output_tok_s = r->output_throughput;
      row.throughput = row.workload == "prefill" ? row.input_tok_s : row.output_tok_s;
      row.ttft_p50_ms = r->ttft.p50;
      row.tpot_p50_ms = r->tpot.p50;
      Status ws = writer->append(row);
      if (!ws) {
        std::fprintf(stderr, "mpserve study: %s\n", ws.message().c_str());
        ++failures;
        break;
      }
      ++measured_now;
      std::fprintf(out,
                   "study: shape=%s context=%d workload=%s engines=%d mps=%s ablation=%s async=%d step_cpu_us=%lld "
                   "repeat=%d concurrency=%d throughput=%.1f (%s) completed=%lld failed=%lld\n",
                   row.shape.c_str(), row.context, row.workload.c_str(), row.engines, row.mps.c_str(),
                   row.ablation.c_str(), row.async, static_cast<long long>(row.step_cpu_us), row.repeat,
                   row.concurrency, row.throughput, std::string(throughput_unit(row.workload)).c_str(),
                   static_cast<long long>(row.completed), static_cast<long long>(row.failed));
      for (const std::string& e : r->first_errors) std::fprintf(out, "study:   error: %s\n", e.c_str());
      std::fflush(out);
    }
    signals.set_serve_pid(-1);
    std::string how = serve.stop();
    for (const std::string& p : serve.log_problems()) append_line(o.out_dir / "logs" / "problems.txt", label + ": " + p);
    if (how != "exit 0" && !signals.interrupted()) {
      std::fprintf(stderr, "mpserve study: %s: serve ended with %s (log: %s)\n", label.c_str(), how.c_str(),
                   spec.log_file.c_str());
    }
    copy_logs(spec.runtime_dir, o.out_dir / "logs" / label);
  }

  auto all = load_results(csv);
  if (all) {
    auto rep = write_report(*all, o.out_dir);
    if (!rep) {
      std::fprintf(stderr, "mpserve study: report: %s\n", rep.error().c_str());
      ++failures;
    } else if (!rep->plot_note.empty()) {
      std::fprintf(out, "study: %s\n", rep->plot_note.c_str());
    }
  } else {
    std::fprintf(stderr, "mpserve study: %s\n", all.error().c_str());
    ++failures;
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
  std::fprintf(out, "study: %s measured=%d skipped=%d failures=%d elapsed_s=%.1f out=%s\n",
               signals.interrupted() ? "interrupted" : "done", measured_now, plan->cells_total - plan->cells_todo,
               failures, elapsed, o.out_dir.c_str());
  if (signals.interrupted()) return 130;
  return failures > 0 ? 1 : 0;
}

}  // namespace mpserve::study
