#include "study/machine.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <vector>

#include "supervisor/process.h"

namespace mpserve::study {
namespace {

constexpr std::chrono::milliseconds kToolTimeout{15000};

std::string trim(std::string s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  size_t e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// Output of a short command that exited 0, or nullopt.
std::optional<std::string> command_output(const std::vector<std::string>& argv) {
  if (!supervisor::find_executable(argv[0])) return std::nullopt;
  auto r = supervisor::run_command(argv, {}, "", kToolTimeout);
  if (!r || r->exit_code != 0) return std::nullopt;
  return r->output;
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      size_t colon = line.find(':');
      if (colon != std::string::npos) return trim(line.substr(colon + 1));
    }
  }
  return "unknown";
}

std::string git_commit() {
  auto head = command_output({"git", "rev-parse", "--short=12", "HEAD"});
  if (!head) return "unknown";
  std::string commit = trim(*head);
  auto dirty = command_output({"git", "status", "--porcelain", "--untracked-files=no"});
  if (dirty && !trim(*dirty).empty()) commit += "-dirty";
  return commit;
}

}  // namespace

bool gpu_present() { return std::filesystem::exists("/dev/nvidiactl") && std::filesystem::exists("/dev/nvidia0"); }

MachineInfo detect_machine(const std::string& device, const std::string& commit_override) {
  MachineInfo m;
  m.device = device;
  m.commit = commit_override.empty() ? git_commit() : commit_override;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  m.cpu_cores = cores > 0 ? static_cast<int>(cores) : 1;
  if (device == "cpu") {
    m.gpu = "cpu (" + cpu_model_name() + ")";
    m.driver = "none";
    m.cuda = "none";
    return m;
  }
  m.gpu = m.driver = m.cuda = "unknown";
  if (auto q = command_output({"nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader,nounits", "--id=0"})) {
    std::stringstream line(trim(q->substr(0, q->find('\n'))));
    std::string name, driver, mem;
    std::getline(line, name, ',');
    std::getline(line, driver, ',');
    std::getline(line, mem, ',');
    if (!trim(name).empty()) m.gpu = trim(name);
    if (!trim(driver).empty()) m.driver = trim(driver);
    try {
      m.gpu_memory_mib = std::stoll(trim(mem));
    } catch (const std::exception&) {
      m.gpu_memory_mib = 0;
    }
  }
  std::smatch match;
  if (auto header = command_output({"nvidia-smi"})) {
    if (std::regex_search(*header, match, std::regex("CUDA Version: *([0-9.]+)"))) m.cuda = match[1];
  }
  if (m.cuda == "unknown") {
    if (auto nvcc = command_output({"nvcc", "--version"})) {
      if (std::regex_search(*nvcc, match, std::regex("release ([0-9.]+)"))) m.cuda = match[1];
    }
  }
  return m;
}

}  // namespace mpserve::study
