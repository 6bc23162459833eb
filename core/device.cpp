#include "core/device.h"

#include <cstdint>
#include <mutex>
#include <vector>

#include "core/cuda_utils.h"
#include "core/dtype.h"
#include "core/error.h"

namespace fg {

DType dtype_from_name(const std::string& name) {
  if (name == "f32" || name == "float32") return DType::F32;
  if (name == "f64" || name == "float64") return DType::F64;
  if (name == "bf16" || name == "bfloat16") return DType::BF16;
  if (name == "i32" || name == "int32") return DType::I32;
  FG_THROW("unknown dtype '", name, "': expected f32, f64, bf16 or i32");
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::cpu();
  if (name == "cuda") return Device::cuda(0);
  if (name.rfind("cuda:", 0) == 0) {
    std::string idx = name.substr(5);
    FG_CHECK(!idx.empty() && idx.find_first_not_of("0123456789") == std::string::npos,
             "bad device '", name, "': expected cpu, cuda or cuda:N");
    return Device::cuda(std::stoi(idx));
  }
  FG_THROW("bad device '", name, "': expected cpu, cuda or cuda:N");
}

int cuda_device_count() {
#ifdef FG_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

bool cuda_available() { return cuda_device_count() > 0; }

int cuda_compute_capability(int index) {
#ifdef FG_CUDA
  if (index < 0 || index >= cuda_device_count()) return 0;
  int major = 0, minor = 0;
  FG_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index));
  FG_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index));
  return major * 10 + minor;
#else
  (void)index;
  return 0;
#endif
}

#ifdef FG_CUDA
namespace cuda {

void set_device(int index) {
  int n = cuda_device_count();
  FG_CHECK(index >= 0 && index < n, "device cuda:", index, " requested but ", n,
           " CUDA device(s) are visible", n == 0 ? " (no GPU or no driver)" : "");
  FG_CUDA_CHECK(cudaSetDevice(index));
}

namespace {
// One non-blocking stream per device and kind, created on first use and kept for the process.
cudaStream_t device_stream(bool side) {
  static std::mutex mutex;
  static std::vector<cudaStream_t> streams[2];
  int dev = 0;
  FG_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mutex);
  std::vector<cudaStream_t>& kind = streams[side];
  if (static_cast<int>(kind.size()) <= dev) kind.resize(dev + 1, nullptr);
  if (!kind[dev]) {
    int least = 0, greatest = 0;
    FG_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    FG_CUDA_CHECK(
        cudaStreamCreateWithPriority(&kind[dev], cudaStreamNonBlocking, side ? least : greatest));
    if (!side) {
      // Keep freed blocks in the pool instead of returning them to the driver.
      cudaMemPool_t pool;
      FG_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
      uint64_t threshold = UINT64_MAX;
      FG_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    }
  }
  return kind[dev];
}
}  // namespace

cudaStream_t stream() {
  return device_stream(false);
}
cudaStream_t side_stream() {
  return device_stream(true);
}

}  // namespace cuda
#endif

}  // namespace fg
