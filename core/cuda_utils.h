// CUDA helpers: the check macro, the stream every kernel runs on, and the
// launch helpers. Only compiled into CUDA builds.
#pragma once

#ifdef FG_CUDA
#include <cuda_runtime.h>

#include "core/error.h"

#define FG_CUDA_CHECK(expr)                                                              \
  do {                                                                                   \
    cudaError_t fg_err_ = (expr);                                                        \
    if (fg_err_ != cudaSuccess)                                                          \
      ::fg::throw_error(__FILE__, __LINE__, #expr,                                       \
                        ::fg::str_cat("CUDA error: ", cudaGetErrorString(fg_err_)));     \
  } while (0)

namespace fg::cuda {

// All fusegpt kernels run in order on one stream per device, at the greatest priority.
cudaStream_t stream();
// A second stream per device at the least priority, for work that may run beside the
// compute stream's (the gradient norm under backward): the block scheduler gives it
// only the SMs the compute stream's kernels leave free. Its user orders it against
// stream() with events.
cudaStream_t side_stream();

// Sets the current device and checks it exists.
void set_device(int index);

// Whether the current device is a Hopper GPU and this build holds the sm_90a image
// (wgmma, TMA, setmaxnreg): the gate in front of every Hopper-only kernel, whose
// other images trap.
bool sm90a_kernels_run();

// The current device's streaming multiprocessors.
int sm_count();

inline unsigned grid_for(int64_t n, int block) {
  return static_cast<unsigned>((n + block - 1) / block);
}

}  // namespace fg::cuda
#endif
