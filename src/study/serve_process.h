// One `mpserve serve` child of the study: started in its own process group (it dies with the
// study: PR_SET_PDEATHSIG, and serve's guardian then quits the MPS daemon), ready once its router
// listens and every engine answers, stopped with SIGTERM to the group, then SIGKILL.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/status.h"

namespace mpserve::study {

struct ServeSpec {
  std::vector<std::string> argv;        // the whole `mpserve serve ...` command, without --port/--runtime-dir
  int engines = 1;                      // how many must answer /health before the server is ready
  std::filesystem::path runtime_dir;    // --runtime-dir (engine logs, MPS pipe and log dirs)
  std::filesystem::path log_file;       // serve's stdout and stderr
  double ready_timeout_s = 600;
};

class ServeProcess {
 public:
  ServeProcess() = default;
  ~ServeProcess() { stop(); }
  ServeProcess(const ServeProcess&) = delete;
  ServeProcess& operator=(const ServeProcess&) = delete;

  // Spawns serve on a free port (--port 0; the port comes from its "listening on" line) and waits
  // until the router reports `engines` available. On failure the process is stopped and the
  // error carries the tail of its log.
  Status start(const ServeSpec& spec);
  // Empty when the process is running, else how it exited.
  std::string exited() const;
  // SIGTERM to the group, 60 s for serve to drain and stop engines and daemons, then SIGKILL.
  // Returns serve's exit ("exit 0", ...); "" when it was not running.
  std::string stop();

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  const ServeSpec& spec() const { return spec_; }
  // Warning and error lines this start wrote to serve's log (engine exits, restarts, MPS recoveries).
  std::vector<std::string> log_problems() const;

 private:
  ServeSpec spec_;
  pid_t pid_ = -1;
  int port_ = 0;
  size_t log_start_ = 0;  // size of the (appended-to) log before this start
  mutable std::string exit_;
};

// The last `max_lines` lines of a text file.
std::string tail_of_file(const std::filesystem::path& path, int max_lines);

}  // namespace mpserve::study
