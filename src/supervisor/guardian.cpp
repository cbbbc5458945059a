#include "supervisor/guardian.h"

#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "common/env.h"
#include "common/log.h"
#include "supervisor/process.h"

namespace mpserve::supervisor {

Status start_guardian(const std::string& token, const std::vector<MpsDaemonOptions>& daemons) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return Status::errorf("guardian pipe: {}", strerror(errno));
  pid_t pid = fork();
  if (pid < 0) return Status::errorf("guardian fork: {}", strerror(errno));
  if (pid > 0) {
    ::close(fds[0]);
    return Status::ok();  // fds[1] stays open for this process's lifetime, on purpose
  }
  // The guardian: its own session, so a terminal's Ctrl-C reaching the supervisor's group spares it.
  setsid();
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) signal(sig, SIG_IGN);
  ::close(fds[1]);
  char c;
  while (::read(fds[0], &c, 1) != 0) {
    if (errno != EINTR) break;
  }
  for (const MpsDaemonOptions& o : daemons) {
    MpsDaemon d(o);
    if (!d.owned_pids().empty()) {
      log::warn("guardian: the supervisor is gone; stopping the MPS daemon of GPU {}", o.gpu);
      Status st = d.stop(std::chrono::milliseconds(10'000));
      (void)st;
    }
  }
  for (pid_t p : processes_with_env(env::kSupervisorToken, token)) {
    log::warn("guardian: the supervisor is gone; killing leftover process {}", p);
    kill(p, SIGKILL);
  }
  _exit(0);
}

}  // namespace mpserve::supervisor
