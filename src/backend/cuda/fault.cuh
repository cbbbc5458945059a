// Test-only: a kernel that writes to an illegal address (a planted device fault).
#pragma once

#include <cuda_runtime.h>

namespace mpserve::backend::cuda {

// Launches a write through an invalid pointer on `stream`. The fault surfaces at the next
// synchronisation as cudaErrorIllegalAddress; under MPS it takes down every client of the server.
void launch_illegal_address_write(cudaStream_t stream);

}  // namespace mpserve::backend::cuda
