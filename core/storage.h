// RAII device memory. CPU: 64-byte aligned host memory. CUDA: CUDA's
// stream-ordered allocator (cudaMallocAsync on the device's default memory pool,
// which keeps freed blocks for reuse), so no home-made cache.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/device.h"

namespace fg {

class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

  // Live allocations and bytes across all devices: tests use them to prove
  // that activation recomputation keeps less alive.
  static int64_t live_count() { return live_count_.load(); }
  static int64_t live_bytes() { return live_bytes_.load(); }
  // The most live bytes since the last reset_peak_bytes() (like PyTorch's
  // max_memory_allocated), for memory summaries and benchmarks.
  static int64_t peak_bytes() { return peak_bytes_.load(); }
  static void reset_peak_bytes() { peak_bytes_ = live_bytes_.load(); }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  static std::atomic<int64_t> live_count_;
  static std::atomic<int64_t> live_bytes_;
  static std::atomic<int64_t> peak_bytes_;
};

}  // namespace fg
