// Per-device facts, read once: which image of this build the device runs, its SM count.
#include <mutex>
#include <vector>

#include "core/cuda_utils.h"

namespace fg::cuda {
namespace {
// 1 in the sm_90a image, 0 in any other: read once per device to learn which one runs.
// Every .cu of the project is built for the same architectures, so this answers for
// the Hopper kernels of every file.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ int g_sm90a_built = 1;
#else
__device__ int g_sm90a_built = 0;
#endif

// A value of the current device, computed by init(device) on first use.
template <class F>
int per_device(std::vector<int>& known, F init) {
  static std::mutex mu;
  int device = 0;
  FG_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mu);
  if (static_cast<int>(known.size()) <= device) known.resize(device + 1, -1);
  if (known[device] < 0) known[device] = init(device);
  return known[device];
}

}  // namespace

bool sm90a_kernels_run() {
  static std::vector<int> known;
  return per_device(known, [](int device) {
           int major = 0, built = 0;
           FG_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
           if (major == 9) FG_CUDA_CHECK(cudaMemcpyFromSymbol(&built, g_sm90a_built, sizeof(int)));
           return static_cast<int>(major == 9 && built == 1);
         }) == 1;
}

int sm_count() {
  static std::vector<int> known;
  return per_device(known, [](int device) {
    int n = 0;
    FG_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    return n;
  });
}

}  // namespace fg::cuda
