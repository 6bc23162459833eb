#include "core/storage.h"

#include <cstdlib>
#include <new>

#include "core/cuda_utils.h"
#include "core/error.h"

namespace fg {

std::atomic<int64_t> Storage::live_count_{0};
std::atomic<int64_t> Storage::live_bytes_{0};
std::atomic<int64_t> Storage::peak_bytes_{0};

namespace {
constexpr size_t kCpuAlignment = 64;

#ifdef FG_CUDA
std::string format_bytes(size_t bytes) {
  return str_cat(bytes, " bytes (", static_cast<double>(bytes) / (1 << 20), " MiB)");
}
#endif
}  // namespace

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  size_t padded = (nbytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
  if (padded == 0) padded = kCpuAlignment;
  if (device.is_cpu()) {
    data_ = std::aligned_alloc(kCpuAlignment, padded);
    FG_CHECK(data_ != nullptr, "out of host memory allocating ", nbytes, " bytes");
  } else {
#ifdef FG_CUDA
    cuda::set_device(device.index);
    cudaError_t err = cudaMallocAsync(&data_, padded, cuda::stream());
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the sticky-free error so later calls work
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      FG_THROW("CUDA out of memory on ", device.str(), ": asked for ", format_bytes(nbytes),
               ", free ", format_bytes(free_b), " of ", format_bytes(total_b));
    }
    FG_CUDA_CHECK(err);
#else
    FG_THROW("fusegpt was built without CUDA (FG_CUDA=OFF); cannot allocate on ", device.str());
#endif
  }
  live_count_ += 1;
  const int64_t live = live_bytes_ += static_cast<int64_t>(nbytes);
  int64_t peak = peak_bytes_.load();
  while (live > peak && !peak_bytes_.compare_exchange_weak(peak, live)) {
  }
}

Storage::~Storage() {
  if (device_.is_cpu()) {
    std::free(data_);
  } else {
#ifdef FG_CUDA
    cudaFreeAsync(data_, cuda::stream());  // never throws from a destructor
#endif
  }
  live_count_ -= 1;
  live_bytes_ -= static_cast<int64_t>(nbytes_);
}

}  // namespace fg
