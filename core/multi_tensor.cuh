// Multi-tensor launches, shared by grad_norm and adamw: the host packs a list of
// tensors (slots) into a kernel parameter passed by value (no device table, no
// host-to-device copy, so the launch can be captured in a CUDA graph); each block
// takes one fixed-size chunk of elements (kPerThread per thread, each op its own) and
// finds its slot by binary search.
// Lists longer than one pack take one launch per pack. Also: per-step scalars
// that kernels read from device memory.
#pragma once

#include <cstdint>
#include <vector>

#include "core/cuda_utils.h"
#include "core/tensor.h"

namespace fg::multi_tensor {

constexpr int kBlock = 256;
// Elements per block when each thread takes kPerThread.
template <int kPerThread>
constexpr int64_t kChunkElems = int64_t{kPerThread} * kBlock;
// Slots per launch: a pack of 64-byte AdamW slots is 16 KB, well inside the
// 32764 bytes of kernel parameters CUDA 12.1+ allows.
constexpr int kPackSlots = 256;
constexpr int64_t kMaxGrid = (int64_t{1} << 31) - 1;

template <int kPerThread>
inline int64_t num_chunks(int64_t numel) {
  return (numel + kChunkElems<kPerThread> - 1) / kChunkElems<kPerThread>;
}

// Slot: a struct with `int64_t numel` and `int64_t first_chunk` (the chunks of
// earlier slots of its pack come first) and whatever its kernel needs.
template <class Slot>
struct SlotPack {
  Slot slots[kPackSlots];
  int num_slots;
};

// The slot holding this block's chunk: the last one whose first_chunk <= blockIdx.x.
template <class Slot>
__device__ __forceinline__ const Slot& find_slot(const SlotPack<Slot>& pack) {
  int lo = 0, hi = pack.num_slots - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (pack.slots[mid].first_chunk <= static_cast<int64_t>(blockIdx.x))
      lo = mid;
    else
      hi = mid - 1;
  }
  return pack.slots[lo];
}

// This block's elements [begin, end) of its slot s.
template <int kPerThread, class Slot>
__device__ __forceinline__ void chunk_range(const Slot& s, int64_t& begin, int64_t& end) {
  begin = (static_cast<int64_t>(blockIdx.x) - s.first_chunk) * kChunkElems<kPerThread>;
  end = min(begin + kChunkElems<kPerThread>, s.numel);
}

// Packs the slots in order (first_chunk is filled in here; empty slots are left
// out) and calls launch(pack, grid, chunk_base) once per pack: grid blocks, one
// per chunk, whose chunks follow the chunk_base chunks of the earlier packs.
// Returns the number of chunks over all packs.
template <int kPerThread, class Slot, class Launch>
int64_t launch_packs(const char* op, const std::vector<Slot>& slots, Launch&& launch) {
  SlotPack<Slot> pack;
  pack.num_slots = 0;
  int64_t chunks = 0, base = 0;
  auto flush = [&] {
    if (pack.num_slots == 0) return;
    launch(pack, static_cast<unsigned>(chunks), base);
    base += chunks;
    chunks = 0;
    pack.num_slots = 0;
  };
  for (const Slot& slot : slots) {
    if (slot.numel == 0) continue;
    int64_t n = num_chunks<kPerThread>(slot.numel);
    FG_CHECK(n <= kMaxGrid, op, ": a tensor of ", slot.numel, " elements exceeds the CUDA grid");
    if (pack.num_slots == kPackSlots || chunks + n > kMaxGrid) flush();
    Slot& s = pack.slots[pack.num_slots++];
    s = slot;
    s.first_chunk = chunks;
    chunks += n;
  }
  flush();
  return base;
}

// A one-element f32 or f64 tensor that a kernel reads when it runs.
struct DeviceScalar {
  const void* data = nullptr;  // null: undefined
  bool f64 = false;
};

inline DeviceScalar device_scalar(const Tensor& t) {
  if (!t.defined()) return {};
  return {t.raw_data(), t.dtype() == DType::F64};
}

__device__ __forceinline__ double load(const DeviceScalar& s, double if_undefined) {
  if (!s.data) return if_undefined;
  return s.f64 ? *static_cast<const double*>(s.data) : *static_cast<const float*>(s.data);
}

}  // namespace fg::multi_tensor
