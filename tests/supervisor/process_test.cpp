// Child-process plumbing: groups, parent-death signal, command output and timeouts, templates.
#include <signal.h>

#include <gtest/gtest.h>

#include "fakes/test_http.h"
#include "supervisor/engine_launch.h"
#include "supervisor/process.h"

namespace mpserve::supervisor {
namespace {

using mpserve::testing::alive;
using mpserve::testing::read_text;
using mpserve::testing::TempDir;

TEST(Process, spawned_child_leads_its_group_and_terminate_group_kills_its_children_too) {
  TempDir dir("proc");
  SpawnSpec spec;
  spec.argv = {"/bin/sh", "-c", "sleep 30 & echo $! > " + (dir.path() / "grandchild").string() + "; echo hi $FOO; wait"};
  spec.env_set = {{"FOO", "bar"}};
  spec.log_file = dir.path() / "log";
  auto pid = spawn_process(spec);
  ASSERT_TRUE(pid.is_ok());
  ASSERT_TRUE(mpserve::testing::wait_until([&] { return !read_text(dir.path() / "grandchild").empty(); },
                                           std::chrono::seconds(5)));
  pid_t grandchild = std::stoi(read_text(dir.path() / "grandchild"));
  EXPECT_EQ(getpgid(*pid), *pid);
  EXPECT_EQ(getpgid(grandchild), *pid);
  terminate_group(*pid, std::chrono::milliseconds(500));
  EXPECT_FALSE(alive(*pid));
  EXPECT_TRUE(mpserve::testing::wait_until([&] { return !alive(grandchild); }, std::chrono::seconds(2)));
  EXPECT_NE(read_text(dir.path() / "log").find("hi bar"), std::string::npos);
}

TEST(Process, run_command_captures_output_exit_code_and_enforces_its_timeout) {
  auto r = run_command({"/bin/sh", "-c", "read x; echo got $x; exit 3"}, {}, "line\n", std::chrono::seconds(5));
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->output, "got line\n");
  auto slow = run_command({"/bin/sleep", "10"}, {}, "", std::chrono::milliseconds(200));
  EXPECT_FALSE(slow.is_ok());
  EXPECT_FALSE(run_command({"/no/such/binary"}, {}, "", std::chrono::seconds(1)).is_ok());
}

TEST(EngineLaunch, templates_sizes_and_command_splitting) {
  auto t = expand_template("serve --port {port} --frac {memory_fraction}", {{"port", "8001"}, {"memory_fraction", "0.450"}});
  EXPECT_EQ(*t, "serve --port 8001 --frac 0.450");
  EXPECT_FALSE(expand_template("x {prot}", {{"port", "1"}}).is_ok());
  auto s = *split_command("python -m 'vllm serve' --x \"a b\" c");
  ASSERT_EQ(s.size(), 6u);
  EXPECT_EQ(s[2], "vllm serve");
  EXPECT_EQ(s[4], "a b");
  EXPECT_EQ(*parse_mem_limit("20G"), "20G");
  EXPECT_EQ(*parse_mem_limit("512mib"), "512M");
  EXPECT_FALSE(parse_mem_limit("lots").is_ok());
  EXPECT_FALSE(parse_mem_limit("5Q").is_ok());
}

}  // namespace
}  // namespace mpserve::supervisor
