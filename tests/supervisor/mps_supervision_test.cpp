// MPS supervision against tests/fakes/fake_mps_control (same command interface as the real
// nvidia-cuda-mps-control): private directories, per-client environment, stale/existing daemon
// detection, shared-fate recovery under load, and no daemon left after SIGTERM or the supervisor's death.
#include <atomic>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "supervisor/process.h"
#include "supervisor/serve_util.h"

namespace mpserve::testing {
namespace {

const std::string kFakeCmd = std::string(MPSERVE_FAKE_ENGINE) + " --port {port} --name e{index} --delay-ms 2";

std::vector<std::string> mps_args(std::vector<std::string> more = {}) {
  std::vector<std::string> a{"--engines", "2", "--mps", "on", "--mps-control-bin", MPSERVE_FAKE_MPS_CONTROL,
                             "--engine-cmd", kFakeCmd};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

pid_t daemon_pid(const std::filesystem::path& rt) {
  std::string text = read_text(rt / "mps-gpu0/pipe/nvidia-cuda-mps-control.pid");
  return text.empty() ? -1 : std::stoi(text);
}

std::string environ_of(pid_t pid) {
  std::string env = read_text("/proc/" + std::to_string(pid) + "/environ");
  std::replace(env.begin(), env.end(), '\0', '\n');
  return env;
}

TEST(MpsSupervision, daemon_per_gpu_with_private_dirs_and_per_engine_client_limits) {
  TempDir dir("mps-env");
  auto rt = dir.path() / "rt";
  Serve serve(rt, mps_args({"--sm-percent", "30,60", "--engine-mem-limit", "2G"}));
  ASSERT_GT(serve.wait_listening(std::chrono::seconds(30)), 0) << serve.log();
  ASSERT_TRUE(serve.wait_available(2, std::chrono::seconds(30))) << serve.log();
  pid_t d = daemon_pid(rt);
  ASSERT_TRUE(alive(d));
  EXPECT_NE(read_text(rt / "mps-gpu0/log/control.log").find("CUDA_VISIBLE_DEVICES=0"), std::string::npos);
  auto pids = serve.engine_pids();
  ASSERT_EQ(pids.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    std::string env = environ_of(pids[i]);
    EXPECT_NE(env.find("CUDA_MPS_PIPE_DIRECTORY=" + (rt / "mps-gpu0/pipe").string() + "\n"), std::string::npos) << env;
    EXPECT_NE(env.find("CUDA_MPS_LOG_DIRECTORY=" + (rt / "mps-gpu0/log").string() + "\n"), std::string::npos);
    EXPECT_NE(env.find(std::string("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=") + (i == 0 ? "30" : "60") + "\n"),
              std::string::npos);
    EXPECT_NE(env.find("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=2G\n"), std::string::npos);
  }
  // The pinned-memory default reached the daemon through its control pipe.
  EXPECT_EQ(read_text(rt / "mps-gpu0/pipe/fake_pinned_mem_limit"), "0 2G\n");
  auto health = nlohmann::json::parse(http_get(serve.port(), "/health").body);
  EXPECT_EQ(health["gpus"][0]["daemon_up"], true);
  EXPECT_NE(http_get(serve.port(), "/metrics").body.find("mpserve_mps_daemon_up{gpu=\"0\"} 1"), std::string::npos);

  serve.child().signal(SIGTERM);
  EXPECT_EQ(serve.child().wait(std::chrono::seconds(30)), 0) << serve.log();
  EXPECT_FALSE(alive(d));
  EXPECT_FALSE(std::filesystem::exists(rt / "mps-gpu0/pipe/nvidia-cuda-mps-control.pid"));
  for (pid_t p : pids) EXPECT_FALSE(alive(p));
  EXPECT_TRUE(wait_until([&] { return processes_mentioning(rt.string()).empty(); }, std::chrono::seconds(10)));
}

TEST(MpsSupervision, shared_fate_fault_restarts_daemon_and_all_engines_while_router_holds_requests) {
  TempDir dir("mps-fault");
  auto rt = dir.path() / "rt";
  Serve serve(rt, mps_args({"--sm-percent", "50"}));
  int port = serve.wait_listening(std::chrono::seconds(30));
  ASSERT_GT(port, 0) << serve.log();
  ASSERT_TRUE(serve.wait_available(2, std::chrono::seconds(30))) << serve.log();
  pid_t d0 = daemon_pid(rt);
  auto before = serve.engine_pids();

  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t) {
    load.emplace_back([&] {
      while (!stop) {
        Reply r = http_request(port, "POST", "/v1/completions", R"({"prompt":"during recovery","max_tokens":4})", 60);
        (r.status == 200 ? ok : failed)++;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // The planted fault: the server log reports it and the faulting client dies.
  std::ofstream(rt / "mps-gpu0/log/server.log", std::ios::app)
      << "[2026-11-27 01:00:00.000 Other 123] Client 4242 encountered a fatal GPU exception (planted by the test)\n";
  ::kill(before[0], SIGKILL);
  bool recovered = wait_until(
      [&] {
        std::string m = http_get(port, "/metrics").body;
        return m.find("mpserve_mps_recoveries_total{gpu=\"0\"} 1") != std::string::npos &&
               m.find("mpserve_router_engines_available 2") != std::string::npos;
      },
      std::chrono::seconds(30));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  for (auto& t : load) t.join();
  ASSERT_TRUE(recovered) << serve.log();
  EXPECT_EQ(failed, 0);
  EXPECT_GT(ok, 20);
  pid_t d1 = daemon_pid(rt);
  EXPECT_FALSE(alive(d0));
  EXPECT_TRUE(alive(d1));
  EXPECT_NE(d0, d1);
  auto after = serve.engine_pids();
  EXPECT_NE(after[0], before[0]);
  EXPECT_NE(after[1], before[1]);  // the healthy neighbour was restarted too: shared fate
  EXPECT_FALSE(alive(before[1]));
  for (const auto& e : serve.engines()) EXPECT_EQ(e["restarts"], 1);
  // Limits were re-applied to the new daemon.
  EXPECT_EQ(read_text(rt / "mps-gpu0/pipe/fake_default_pct"), "50\n");
  auto health = nlohmann::json::parse(http_get(port, "/health").body);
  EXPECT_NE(health["gpus"][0]["last_recovery_reason"].get<std::string>().find("fatal GPU exception"), std::string::npos);
  EXPECT_NE(serve.log().find("shared-fate recovery #1"), std::string::npos);

  serve.child().signal(SIGINT);
  EXPECT_EQ(serve.child().wait(std::chrono::seconds(30)), 0) << serve.log();
  EXPECT_FALSE(alive(d1));
  for (pid_t p : after) EXPECT_FALSE(alive(p));
}

TEST(MpsSupervision, engines_dying_together_are_treated_as_one_shared_fault) {
  TempDir dir("mps-together");
  auto rt = dir.path() / "rt";
  Serve serve(rt, mps_args());
  ASSERT_GT(serve.wait_listening(std::chrono::seconds(30)), 0) << serve.log();
  ASSERT_TRUE(serve.wait_available(2, std::chrono::seconds(30))) << serve.log();
  pid_t d0 = daemon_pid(rt);
  for (pid_t p : serve.engine_pids()) ::kill(p, SIGKILL);
  EXPECT_TRUE(wait_until(
      [&] {
        return http_get(serve.port(), "/metrics").body.find("mpserve_mps_recoveries_total{gpu=\"0\"} 1") !=
               std::string::npos;
      },
      std::chrono::seconds(20)))
      << serve.log();
  EXPECT_TRUE(serve.wait_available(2, std::chrono::seconds(20)));
  EXPECT_NE(daemon_pid(rt), d0);
  serve.child().signal(SIGTERM);
  EXPECT_EQ(serve.child().wait(std::chrono::seconds(30)), 0);
}

TEST(MpsSupervision, refuses_a_pipe_dir_with_a_live_daemon_or_a_stale_pid_file) {
  TempDir dir("mps-stale");
  auto rt = dir.path() / "rt";
  auto pipe = rt / "mps-gpu0/pipe";
  std::vector<std::pair<std::string, std::string>> env{{"CUDA_MPS_PIPE_DIRECTORY", pipe.string()},
                                                       {"CUDA_MPS_LOG_DIRECTORY", (rt / "mps-gpu0/log").string()}};
  // A daemon someone else started on that pipe directory.
  auto started = supervisor::run_command({MPSERVE_FAKE_MPS_CONTROL, "-d"}, env, "", std::chrono::seconds(10));
  ASSERT_TRUE(started.is_ok());
  pid_t other = daemon_pid(rt);
  ASSERT_TRUE(alive(other));
  {
    Serve serve(rt, mps_args());
    EXPECT_EQ(serve.child().wait(std::chrono::seconds(30)), 1);
    EXPECT_NE(serve.log().find("already serves pipe directory"), std::string::npos) << serve.log();
  }
  EXPECT_TRUE(alive(other)) << "the other daemon must not be clobbered";
  ASSERT_TRUE(supervisor::run_command({MPSERVE_FAKE_MPS_CONTROL}, env, "quit\n", std::chrono::seconds(10)).is_ok());
  ASSERT_TRUE(wait_until([&] { return !alive(other); }, std::chrono::seconds(5)));

  // A pid file whose daemon died.
  std::ofstream(pipe / "nvidia-cuda-mps-control.pid") << "999999\n";
  {
    Serve serve(rt, mps_args());
    EXPECT_EQ(serve.child().wait(std::chrono::seconds(30)), 1);
    EXPECT_NE(serve.log().find("stale MPS state"), std::string::npos) << serve.log();
  }
  Serve serve(rt, mps_args({"--mps-remove-stale"}));
  ASSERT_GT(serve.wait_listening(std::chrono::seconds(30)), 0) << serve.log();
  ASSERT_TRUE(serve.wait_available(2, std::chrono::seconds(30))) << serve.log();
  pid_t d = daemon_pid(rt);
  EXPECT_TRUE(alive(d));
  serve.child().signal(SIGTERM);
  EXPECT_EQ(serve.child().wait(std::chrono::seconds(30)), 0);
  EXPECT_FALSE(alive(d));
}

TEST(MpsSupervision, supervisor_killed_with_sigkill_leaves_no_daemon_or_engine_behind) {
  TempDir dir("mps-crash");
  auto rt = dir.path() / "rt";
  Serve serve(rt, mps_args());
  ASSERT_GT(serve.wait_listening(std::chrono::seconds(30)), 0) << serve.log();
  ASSERT_TRUE(serve.wait_available(2, std::chrono::seconds(30))) << serve.log();
  pid_t d = daemon_pid(rt);
  auto pids = serve.engine_pids();
  ASSERT_TRUE(alive(d));
  serve.child().kill_now();
  EXPECT_TRUE(wait_until([&] { return !alive(d); }, std::chrono::seconds(15))) << "the MPS daemon outlived the supervisor";
  for (pid_t p : pids) EXPECT_TRUE(wait_until([&] { return !alive(p); }, std::chrono::seconds(5)));
  EXPECT_TRUE(wait_until([&] { return processes_mentioning(rt.string()).empty(); }, std::chrono::seconds(10)));
}

}  // namespace
}  // namespace mpserve::testing
