// What a study row says about the machine: GPU name, driver, CUDA version, commit, device.
#pragma once

#include <cstdint>
#include <string>

namespace mpserve::study {

struct MachineInfo {
  std::string device;  // cpu | cuda
  std::string gpu;     // nvidia-smi's name of GPU 0, or "cpu (<model name from /proc/cpuinfo>)"
  std::string driver;  // nvidia-smi driver_version; "none" on CPU
  std::string cuda;    // the "CUDA Version" nvidia-smi prints (else nvcc's release); "none" on CPU
  std::string commit;  // git short hash of the working directory (+"-dirty"), or "unknown"
  int64_t gpu_memory_mib = 0;  // memory.total of GPU 0; 0 when unknown or on CPU
  int cpu_cores = 1;
};

// True when /dev/nvidiactl and /dev/nvidia0 exist (the same test `mpserve serve --mps auto` uses).
bool gpu_present();

// `device` is cpu or cuda; `commit_override` (non-empty) replaces the git lookup. Never fails:
// what cannot be found reads "unknown".
MachineInfo detect_machine(const std::string& device, const std::string& commit_override);

}  // namespace mpserve::study
