// The crash guardian: a small process forked before any thread exists that outlives the supervisor.
// When the supervisor dies for any reason (SIGKILL, a crash), the guardian quits the MPS daemons and
// kills every process carrying the supervisor's mark, so nothing is left behind. Engines also die
// through PR_SET_PDEATHSIG; the daemons, which must daemonize, have only the guardian.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "supervisor/mps_daemon.h"

namespace mpserve::supervisor {

// Must be called while the process has one thread. The guardian wakes on EOF of a pipe whose write end
// only this process holds; after a normal shutdown its sweep finds nothing.
Status start_guardian(const std::string& token, const std::vector<MpsDaemonOptions>& daemons);

}  // namespace mpserve::supervisor
