// A kernel timeline for any CUDA process, without Nsight Systems (the GPU machine has none):
// LD_PRELOAD this library and set MPSERVE_KERNEL_TRACE=FILE; every kernel the process runs,
// graph nodes included, is written to FILE as "start_ns,end_ns,name" (GPU timestamps, CUPTI
// activity records of kind CONCURRENT_KERNEL, which keeps kernels concurrent, PDL overlap
// included). tools/gpu/step_timeline.sh reads it.
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>

namespace {

FILE* g_out = nullptr;
constexpr size_t kBufferBytes = size_t{32} << 20;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* rec = nullptr;
  while (g_out && cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && rec->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
    int status = 0;
    char* plain = k->name ? abi::__cxa_demangle(k->name, nullptr, nullptr, &status) : nullptr;
    std::fprintf(g_out, "%llu,%llu,\"%s\"\n", static_cast<unsigned long long>(k->start),
                 static_cast<unsigned long long>(k->end), plain ? plain : k->name ? k->name : "?");
    std::free(plain);
  }
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped) == CUPTI_SUCCESS && dropped > 0 && g_out) {
    std::fprintf(stderr, "kernel_trace: %zu records dropped\n", dropped);
  }
  std::free(buffer);
}

__attribute__((constructor)) void start() {
  const char* path = std::getenv("MPSERVE_KERNEL_TRACE");
  if (!path || !*path) return;
  g_out = std::fopen(path, "w");
  if (!g_out) {
    std::fprintf(stderr, "kernel_trace: cannot write %s\n", path);
    return;
  }
  std::fprintf(g_out, "start_ns,end_ns,name\n");
  if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    std::fprintf(stderr, "kernel_trace: CUPTI activity tracing could not be enabled\n");
  }
}

__attribute__((destructor)) void stop() {
  if (!g_out) return;
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::fclose(g_out);
  g_out = nullptr;
}

}  // namespace
