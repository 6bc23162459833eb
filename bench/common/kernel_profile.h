// Per-kernel GPU time from CUPTI's activity API, for bench_train --profile:
// kernels (graph-launched ones included), memcpys and memsets, summed by name.
// Builds without CUPTI (FG_CUDA=OFF) compile the same interface; it reports
// itself unavailable.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fg::bench {

struct KernelStat {
  std::string name;  // demangled, without the argument list; "[memcpy HtoD]", "[memset 3072 B]"
  int64_t calls = 0;
  double total_ms = 0;
};

// Time the GPU ran nothing between the end of one record and the start of the next.
struct GapStat {
  std::string before, after;  // the names around the gap
  int64_t count = 0;
  double total_ms = 0;
};

struct KernelProfile {
  std::vector<KernelStat> kernels;  // by total time, largest first
  std::vector<GapStat> gaps;        // idle gaps by the pair of names around them, largest first
  int64_t launches = 0;             // records in the window
  double kernel_ms = 0;             // sum of all durations
  double busy_ms = 0;               // union of the intervals: time the GPU ran anything
  uint64_t dropped = 0;             // records CUPTI dropped (they are not counted above)
};

// One at a time: CUPTI's activity buffers are process-wide.
class KernelProfiler {
 public:
  // Starts tracing; throws fg::Error with CUPTI's reason when it cannot trace
  // here (no CUPTI in this build, no permission, a sandbox).
  KernelProfiler();
  ~KernelProfiler();  // stops tracing if finish() was not called; never throws
  KernelProfiler(const KernelProfiler&) = delete;
  KernelProfiler& operator=(const KernelProfiler&) = delete;

  // Stops tracing, flushes CUPTI's buffers and sums the records of the last
  // window_ms of GPU time: those that start at most window_ms before the last
  // record ends. Anchored on the GPU's last record, not on a host clock, since
  // train() keeps running on the host (teardown) after its last kernel.
  KernelProfile finish(double window_ms);

 private:
  bool active_ = false;
};

// "void fg::ops::(anonymous namespace)::foo_kernel<fg::bf16, 4>(float const*, int)"
// -> "foo_kernel<bf16, 4>": no return type, arguments or namespaces; then cut in
// the middle to at most max_chars (the start names the kernel, the end often
// holds its tile sizes).
std::string short_kernel_name(const std::string& demangled, size_t max_chars = 80);

}  // namespace fg::bench
