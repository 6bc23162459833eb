// Device time of GPU work for the CUDA benchmarks: CUDA events on the fusegpt stream.
// A device spin first gives the host a head start, so every timed call is enqueued before the
// device reaches it and host overhead never shows as device time. Candidates that are compared
// with each other are timed interleaved: each repetition runs every candidate once, in turn, so
// clocks that fall under sustained load (an H200 at full tensor load, within seconds) weigh on
// all of them alike instead of favouring whichever runs first.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "core/cuda_utils.h"

namespace fg::bench {

// Busy-waits on the device for `cycles` SM clocks (static: one copy per benchmark).
static __global__ void spin_kernel(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

class GpuTimer {
 public:
  // `warmup` untimed rounds of every candidate, then `reps` timed rounds.
  GpuTimer(int warmup, int reps) : warmup_(warmup), reps_(reps) {
    int rate_khz = 0;
    FG_CUDA_CHECK(cudaDeviceGetAttribute(&rate_khz, cudaDevAttrClockRate, 0));
    spin_cycles_ = static_cast<long long>(kSpinSeconds * rate_khz * 1e3);
  }

  // Median milliseconds of each candidate, called as fns[c](i). i numbers every call of this
  // median_ms, candidates together, so inputs rotated by i differ from one call to the next:
  // no call finds the previous call's inputs in L2, whichever candidate made it.
  std::vector<double> median_ms(const std::vector<std::function<void(int)>>& fns) const {
    cudaStream_t stream = cuda::stream();
    const size_t candidates = fns.size();
    int call = 0;
    for (int round = 0; round < warmup_; ++round)
      for (const auto& f : fns) f(call++);
    // Two events per timed call, created before the spin so that creating them costs no head
    // start; the call of repetition r, candidate c, is k = r * candidates + c.
    std::vector<cudaEvent_t> events(2 * candidates * reps_);
    for (cudaEvent_t& e : events) FG_CUDA_CHECK(cudaEventCreate(&e));
    FG_CUDA_CHECK(cudaStreamSynchronize(stream));
    spin_kernel<<<1, 1, 0, stream>>>(spin_cycles_);
    FG_CUDA_CHECK(cudaGetLastError());
    for (size_t k = 0; k < events.size() / 2; ++k) {
      FG_CUDA_CHECK(cudaEventRecord(events[2 * k], stream));
      fns[k % candidates](call++);
      FG_CUDA_CHECK(cudaEventRecord(events[2 * k + 1], stream));
    }
    FG_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<double> medians;
    std::vector<float> ms(reps_);
    for (size_t c = 0; c < candidates; ++c) {
      for (int r = 0; r < reps_; ++r) {
        const size_t k = r * candidates + c;
        FG_CUDA_CHECK(cudaEventElapsedTime(&ms[r], events[2 * k], events[2 * k + 1]));
      }
      std::sort(ms.begin(), ms.end());
      medians.push_back(reps_ % 2 ? ms[reps_ / 2] : 0.5 * (ms[reps_ / 2 - 1] + ms[reps_ / 2]));
    }
    for (cudaEvent_t e : events) FG_CUDA_CHECK(cudaEventDestroy(e));
    return medians;
  }

  // One candidate alone: for a time nothing else in the run is compared with.
  double median_ms(const std::function<void(int)>& f) const {
    return median_ms(std::vector<std::function<void(int)>>{f})[0];
  }

 private:
  static constexpr double kSpinSeconds = 0.05;  // the host's head start
  int warmup_, reps_;
  long long spin_cycles_ = 0;
};

}  // namespace fg::bench
