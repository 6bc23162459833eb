// Median device time of a benchmark call: CUDA events on the fusegpt stream.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "core/cuda_utils.h"

namespace fg::bench {

// Median of `reps` timings of fn(i) after `warmup` untimed calls; i counts the calls, so
// fn can rotate its inputs.
inline double median_ms(const std::function<void(int)>& fn, int warmup, int reps) {
  cudaStream_t stream = cuda::stream();
  for (int i = 0; i < warmup; ++i) fn(i);
  cudaEvent_t start, stop;
  FG_CUDA_CHECK(cudaEventCreate(&start));
  FG_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    FG_CUDA_CHECK(cudaEventRecord(start, stream));
    fn(warmup + i);
    FG_CUDA_CHECK(cudaEventRecord(stop, stream));
    FG_CUDA_CHECK(cudaEventSynchronize(stop));
    FG_CUDA_CHECK(cudaEventElapsedTime(&ms[i], start, stop));
  }
  FG_CUDA_CHECK(cudaEventDestroy(start));
  FG_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2];
}

}  // namespace fg::bench
