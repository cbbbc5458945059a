// `mpserve serve`: MPS daemon(s) + N engines per GPU + the router in front (supervisor/, router/).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "common/env.h"
#include "common/log.h"
#include "router/engine_pool.h"
#include "router/router.h"
#include "study/advise.h"
#include "study/advisor.h"
#include "study/machine.h"
#include "supervisor/guardian.h"
#include "supervisor/process.h"
#include "supervisor/supervisor.h"

namespace mpserve::cli {
namespace {

struct ServeFlags {
  std::string model;
  std::string engines = "2";  // a count, or "auto" (the advisor decides)
  int auto_context = 1024;
  std::string auto_workload = "decode";
  std::vector<std::string> auto_results;
  std::string gpus = "0";
  std::string mps = "auto";
  std::string mps_control_bin;
  bool mps_remove_stale = false;
  std::string engine_cmd;
  std::string engine_args;
  std::string device = "auto";
  std::string sm_percent;
  std::string engine_mem_limit;
  double memory_fraction = 0;
  std::string policy = "least-requests";
  std::string host = "127.0.0.1";
  int port = 8000;
  int threads = 2;
  std::string runtime_dir;
  double hold_timeout_s = 60;
  double drain_timeout_s = 30;
  double ready_timeout_s = 180;
};

Result<std::vector<int>> parse_int_list(const std::string& text, const char* flag) {
  std::vector<int> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      int v = std::stoi(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      return Status::errorf("{}: '{}' is not a comma-separated list of integers", flag, text);
    }
  }
  return out;
}

int fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "mpserve serve: %s\n", message.c_str());
  return code;
}

// --engines auto: what `mpserve advise` says for this model, GPU, context and workload; one engine
// (with a warning that says how to get an answer) when the study has nothing for this GPU.
Result<int> engines_from_advisor(const ServeFlags& f, const std::string& device) {
  MPS_ASSIGN_OR_RETURN(const std::filesystem::path model_dir, resolve_model_dir(f.model));
  MPS_ASSIGN_OR_RETURN(const double params_b, study::model_params_b(model_dir));
  study::AdviceQuery q;
  q.gpu = study::detect_machine(device, "").gpu;
  q.params_b = params_b;
  q.context = f.auto_context;
  q.workload = f.auto_workload;
  const std::vector<std::filesystem::path> files(f.auto_results.begin(), f.auto_results.end());
  MPS_ASSIGN_OR_RETURN(const std::vector<study::GainPoint> gains, study::study_gain_points(files));
  auto advice = study::advise_from_study(gains, q);
  if (!advice) {
    log::warn("--engines auto: {}; starting 1 engine", advice.error());
    return 1;
  }
  log::info("--engines auto: {}", advice->verdict);
  for (const std::string& c : advice->caveats) log::info("--engines auto: caveat: {}", c);
  return advice->engines;
}

int run_serve(const ServeFlags& f) {
  auto policy = router::parse_policy(f.policy);
  if (!policy) return fail(policy.error(), 2);
  auto gpus = parse_int_list(f.gpus, "--gpus");
  if (!gpus) return fail(gpus.error(), 2);
  std::vector<int> sm;
  if (!f.sm_percent.empty()) {
    auto parsed = parse_int_list(f.sm_percent, "--sm-percent");
    if (!parsed) return fail(parsed.error(), 2);
    sm = *parsed;
  }

  supervisor::SupervisorOptions so;
  so.gpus = *gpus;
  const std::string device = f.device == "auto" ? (study::gpu_present() ? "cuda" : "cpu") : f.device;
  int engines = 0;
  if (f.engines == "auto") {
    auto n = engines_from_advisor(f, device);
    if (!n) return fail("--engines auto: " + n.error(), 2);
    engines = *n;
  } else {
    auto n = parse_int_list(f.engines, "--engines");
    if (!n || n->size() != 1 || n->front() < 1 || n->front() > 48) {
      return fail("--engines: '" + f.engines + "' is neither a count from 1 to 48 nor 'auto'", 2);
    }
    engines = n->front();
  }
  so.engines_per_gpu = engines;
  so.mps_control_bin = !f.mps_control_bin.empty()
                           ? f.mps_control_bin
                           : env::get_string(env::kMpsControlBin, "nvidia-cuda-mps-control");
  auto control = supervisor::find_executable(so.mps_control_bin);
  if (f.mps == "on") {
    if (!control) return fail("--mps on: '" + so.mps_control_bin + "' not found (set --mps-control-bin)");
    so.mps = true;
  } else if (f.mps == "auto") {
    so.mps = study::gpu_present() && control.has_value();
  }
  if (control) so.mps_control_bin = *control;
  so.mps_remove_stale = f.mps_remove_stale;
  so.device = device;
  so.model = f.model;
  so.engine_cmd = f.engine_cmd;
  so.engine_args = f.engine_args;
  so.sm_percent = sm;
  so.engine_mem_limit = f.engine_mem_limit;
  so.memory_fraction = f.memory_fraction;
  so.ready_timeout = std::chrono::milliseconds(static_cast<int64_t>(f.ready_timeout_s * 1000));
  so.self_exe = std::filesystem::read_symlink("/proc/self/exe").string();
  so.runtime_dir = !f.runtime_dir.empty()
                       ? std::filesystem::path(f.runtime_dir)
                       : std::filesystem::temp_directory_path() / fmt::format("mpserve-{}-{}", getuid(), f.port);
  so.token = fmt::format("{}@{}", getpid(), std::filesystem::absolute(so.runtime_dir).string());
  if ((!sm.empty() || !f.engine_mem_limit.empty()) && !so.mps) {
    log::warn("--sm-percent / --engine-mem-limit are MPS client limits; MPS is off, so they do nothing");
  }

  router::EnginePool pool;
  supervisor::Supervisor sup(so, pool);
  Status st = sup.prepare();
  if (!st) return fail(st.message(), 2);
  // Before any thread exists (fork safety): the process that cleans up if this one is killed.
  st = supervisor::start_guardian(so.token, sup.daemon_options());
  if (!st) return fail(st.message());

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  log::info("serve: {} engine(s) on GPU(s) {}, device {}, MPS {}, runtime dir {}", engines * so.gpus.size(), f.gpus,
            so.device, so.mps ? "on" : "off", std::filesystem::absolute(so.runtime_dir).string());
  st = sup.start();
  if (!st) {
    sup.shutdown();
    return fail(st.message());
  }
  router::RouterOptions ro;
  ro.host = f.host;
  ro.port = f.port;
  ro.threads = f.threads;
  ro.hold_timeout = std::chrono::milliseconds(static_cast<int64_t>(f.hold_timeout_s * 1000));
  router::Router r(ro, pool, *policy);
  r.set_metrics_hook([&sup] { return sup.metrics_text(); });
  r.set_health_hook([&sup] { return sup.health_json(); });
  st = r.start();
  if (!st) {
    sup.shutdown();
    return fail(st.message());
  }
  std::printf("mpserve serve: listening on http://%s:%d\n", f.host.c_str(), r.port());
  std::fflush(stdout);

  int sig = 0;
  timespec poll_every{0, 200'000'000};
  while (!sup.failed()) {
    sig = sigtimedwait(&signals, nullptr, &poll_every);
    if (sig > 0) break;
  }
  log::info("serve: {}; draining requests in flight", sig > 0 ? strsignal(sig) : "supervisor failed");
  r.drain(std::chrono::milliseconds(static_cast<int64_t>(f.drain_timeout_s * 1000)));
  sup.shutdown();
  r.stop();
  log::info("serve: stopped; no engine or MPS daemon left");
  return sup.failed() ? 1 : 0;
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto f = std::make_shared<ServeFlags>();
  CLI::App* cmd = app.add_subcommand("serve", "MPS daemon + N engines per GPU + router in front");
  cmd->add_option("--model", f->model, "model directory for the engines (default: the embedded tiny model)");
  cmd->add_option("--engines", f->engines,
                  "engines per GPU, or auto: as many as `mpserve advise` recommends for --auto-context and "
                  "--auto-workload (1 when the study has no results for this GPU)")
      ->capture_default_str();
  cmd->add_option("--auto-context", f->auto_context, "--engines auto: the prompt length to plan for")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--auto-workload", f->auto_workload, "--engines auto: decode | prefill")
      ->check(CLI::IsMember({"decode", "prefill"}))
      ->capture_default_str();
  cmd->add_option("--auto-results", f->auto_results, "--engines auto: study results.csv files (default as advise)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--gpus", f->gpus, "GPU indices, comma-separated")->capture_default_str();
  cmd->add_option("--mps", f->mps, "on | off | auto (on when a GPU and nvidia-cuda-mps-control are present)")
      ->check(CLI::IsMember({"on", "off", "auto"}))
      ->capture_default_str();
  cmd->add_option("--mps-control-bin", f->mps_control_bin,
                  "nvidia-cuda-mps-control to use (default: $MPSERVE_MPS_CONTROL_BIN, else from PATH)");
  cmd->add_flag("--mps-remove-stale", f->mps_remove_stale,
                "remove a stale MPS pid file/socket in the runtime dir instead of refusing to start");
  cmd->add_option("--engine-cmd", f->engine_cmd,
                  "engine command template with {port} {gpu} {model} {memory_fraction} {index} {host} "
                  "(default: this binary's `engine` subcommand)");
  cmd->add_option("--engine-args", f->engine_args, "extra flags for the default engine command");
  cmd->add_option("--device", f->device, "default engine device: auto | cpu | cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--sm-percent", f->sm_percent,
                  "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE per engine: one value, or one per engine on a GPU");
  cmd->add_option("--engine-mem-limit", f->engine_mem_limit, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT per engine, e.g. 20G");
  cmd->add_option("--engine-memory-fraction", f->memory_fraction,
                  "each engine's --gpu-memory-fraction (default: 0.9 / engines)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--policy", f->policy, "round-robin | least-requests | least-tokens | prefix-affinity")
      ->capture_default_str();
  cmd->add_option("--host", f->host, "router listen address")->capture_default_str();
  cmd->add_option("--port", f->port, "router port (0 = any free port)")->check(CLI::Range(0, 65535))->capture_default_str();
  cmd->add_option("--threads", f->threads, "router I/O threads")->check(CLI::Range(1, 64))->capture_default_str();
  cmd->add_option("--runtime-dir", f->runtime_dir,
                  "engine logs and private MPS pipe/log directories (default: $TMPDIR/mpserve-<uid>-<port>)");
  cmd->add_option("--hold-timeout", f->hold_timeout_s, "seconds a request waits while no engine is available")
      ->check(CLI::Range(0.0, 3600.0))->capture_default_str();
  cmd->add_option("--drain-timeout", f->drain_timeout_s, "seconds to let requests in flight finish on shutdown")
      ->check(CLI::Range(0.0, 3600.0))->capture_default_str();
  cmd->add_option("--ready-timeout", f->ready_timeout_s, "seconds an engine may take to answer /health after start")
      ->check(CLI::Range(1.0, 3600.0))->capture_default_str();
  cmd->callback([f] { exit_code() = run_serve(*f); });
}

}  // namespace mpserve::cli
