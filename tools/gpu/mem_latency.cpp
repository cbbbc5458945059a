// Per-process CPU and memory latency probe, for the GPU machines' bimodal host time (a decode step's
// host work is either fast or about twice as slow for a whole process). Each run of this program is
// one process; run it many times and compare. Prints one line per repeat:
//   mem_latency: pid=.. rep=.. compute_ns=.. l2_ns=.. llc16m_ns=.. chase4k_ns=.. chase_thp_ns=.. thp_kb=..
// Usage: mem_latency [REPEATS]
// compute_ns: one dependent integer multiply-add chain step (CPU speed, no memory);
// l2_ns: a random pointer chase in 256 KiB (cache-resident);
// llc16m_ns: the same in 16 MiB (MADV_HUGEPAGE): resident in the last-level cache unless other
//   tenants of the host's cache evict it;
// chase4k_ns: a random chase over 256 MiB with MADV_NOHUGEPAGE (a TLB miss per load);
// chase_thp_ns: the same over 256 MiB with MADV_HUGEPAGE (few TLB misses where THP is granted);
// thp_kb: AnonHugePages of this process after touching both buffers.
// Build (static, so the GPU machine needs nothing): g++ -O2 -static -o mem_latency mem_latency.cpp
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kLine = 64;

double now_ns() {
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A single random cycle (Sattolo) through `n` cache lines of `buf`; returns ns per dependent load.
double chase(char* buf, std::size_t bytes, std::size_t loads, uint64_t seed) {
  const std::size_t n = bytes / kLine;
  std::vector<uint32_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = static_cast<uint32_t>(i);
  std::mt19937_64 rng(seed);
  for (std::size_t i = n - 1; i > 0; --i) {
    std::uniform_int_distribution<std::size_t> d(0, i - 1);
    std::swap(order[i], order[d(rng)]);
  }
  for (std::size_t i = 0; i < n; ++i) {
    char* from = buf + std::size_t(order[i]) * kLine;
    char* to = buf + std::size_t(order[(i + 1) % n]) * kLine;
    std::memcpy(from, &to, sizeof to);
  }
  char* p = buf;
  for (std::size_t i = 0; i < loads / 8; ++i) std::memcpy(&p, p, sizeof p);  // warm
  const double t0 = now_ns();
  for (std::size_t i = 0; i < loads; ++i) std::memcpy(&p, p, sizeof p);
  const double t1 = now_ns();
  volatile char sink = *p;
  (void)sink;
  return (t1 - t0) / double(loads);
}

char* map(std::size_t bytes, int advice) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  madvise(p, bytes, advice);
  std::memset(p, 1, bytes);
  return static_cast<char*>(p);
}

long anon_huge_kb() {
  std::ifstream f("/proc/self/smaps_rollup");
  std::string key;
  long v = -1;
  while (f >> key) {
    if (key == "AnonHugePages:") {
      f >> v;
      break;
    }
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  // Repeat count: with more than one, each repeat prints its own line, so a mode that changes over
  // time within one process shows up too.
  const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 1;
  const std::size_t small = 256 << 10, mid = std::size_t(16) << 20, big = std::size_t(256) << 20;
  const std::size_t loads = 1'000'000;
  char* s = map(small, MADV_NORMAL);
  char* m = map(mid, MADV_HUGEPAGE);
  char* a = map(big, MADV_NOHUGEPAGE);
  char* b = map(big, MADV_HUGEPAGE);
  if (!s || !m || !a || !b) {
    std::fprintf(stderr, "mem_latency: mmap failed\n");
    return 1;
  }
  for (int r = 0; r < repeats; ++r) {
    // Compute: a dependent chain the compiler cannot fold.
    uint64_t x = 0x9e3779b97f4a7c15ull ^ uint64_t(getpid()) ^ uint64_t(r);
    const std::size_t iters = 50'000'000;
    const double c0 = now_ns();
    for (std::size_t i = 0; i < iters; ++i) x = x * 6364136223846793005ull + 1442695040888963407ull;
    const double c1 = now_ns();
    volatile uint64_t keep = x;
    (void)keep;
    const double l2 = chase(s, small, loads, 1);
    const double llc = chase(m, mid, loads, 4);
    const double c4k = chase(a, big, loads, 2);
    const double cthp = chase(b, big, loads, 3);
    std::printf("mem_latency: pid=%d rep=%d compute_ns=%.3f l2_ns=%.2f llc16m_ns=%.1f chase4k_ns=%.1f "
                "chase_thp_ns=%.1f thp_kb=%ld\n",
                int(getpid()), r, (c1 - c0) / double(iters), l2, llc, c4k, cthp, anon_huge_kb());
    std::fflush(stdout);
  }
  return 0;
}
