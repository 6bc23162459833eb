// Global gradient norm and scaling on the GPU, multi-tensor: the host lists the
// gradients (pointer, size, dtype, index of its first chunk) in one small device
// table; each block takes one fixed-size chunk and finds its tensor by binary
// search, so a whole model is one launch. The sum of squares is accumulated in
// f64: each block writes its partial with cub::BlockReduce, cub::DeviceReduce
// sums the partials, and the host reads one double (the one sync).
#include <cub/block/block_reduce.cuh>
#include <cub/device/device_reduce.cuh>
#include <vector>

#include "core/cuda_utils.h"
#include "ops/grad_norm/grad_norm.h"

namespace fg::ops::detail {
namespace {

constexpr int kBlock = 256;
constexpr int kPerThread = 16;
constexpr int64_t kChunkElems = kPerThread * kBlock;  // elements per block

struct GradSlot {
  void* data;
  int64_t numel;
  int64_t first_chunk;  // chunks of earlier slots come first
  DType dtype;
};

// The slot table of one call on the device, and the grid it implies.
struct SlotTable {
  Tensor storage;  // owns the device copy
  const GradSlot* slots = nullptr;
  int num_slots = 0;
  unsigned num_chunks = 0;
};

// cudaMemcpyAsync from pageable memory returns once the source is staged, so the
// host vector may die after it; the device copy is freed stream-ordered.
SlotTable make_slot_table(const std::vector<Tensor>& grads) {
  std::vector<GradSlot> slots;
  int64_t chunks = 0;
  for (const Tensor& g : grads) {
    int64_t n = g.numel();
    if (n == 0) continue;
    slots.push_back({g.raw_data(), n, chunks, g.dtype()});
    chunks += (n + kChunkElems - 1) / kChunkElems;
  }
  SlotTable table;
  if (chunks == 0) return table;
  FG_CHECK(chunks < (int64_t{1} << 31), "grad_norm: ", chunks, " chunks exceed the CUDA grid");
  size_t bytes = slots.size() * sizeof(GradSlot);
  table.storage =
      Tensor::empty({static_cast<int64_t>((bytes + 7) / 8)}, DType::F64, grads.front().device());
  FG_CUDA_CHECK(cudaMemcpyAsync(table.storage.raw_data(), slots.data(), bytes,
                                cudaMemcpyHostToDevice, cuda::stream()));
  table.slots = static_cast<const GradSlot*>(table.storage.raw_data());
  table.num_slots = static_cast<int>(slots.size());
  table.num_chunks = static_cast<unsigned>(chunks);
  return table;
}

// The slot holding this block's chunk: the last one whose first_chunk <= blockIdx.x.
__device__ __forceinline__ GradSlot find_slot(const GradSlot* slots, int num_slots) {
  int lo = 0, hi = num_slots - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (slots[mid].first_chunk <= static_cast<int64_t>(blockIdx.x))
      lo = mid;
    else
      hi = mid - 1;
  }
  return slots[lo];
}

// Calls f(p, begin, end) with the slot's data typed by its dtype and this
// block's element range; the switch runs once per block.
template <class F>
__device__ __forceinline__ void for_block_chunk(const GradSlot* slots, int num_slots, F&& f) {
  const GradSlot s = find_slot(slots, num_slots);
  const int64_t begin = (blockIdx.x - s.first_chunk) * kChunkElems;
  const int64_t end = min(begin + kChunkElems, s.numel);
  switch (s.dtype) {
    case DType::F32:
      return f(static_cast<float*>(s.data), begin, end);
    case DType::F64:
      return f(static_cast<double*>(s.data), begin, end);
    default:
      return f(static_cast<bf16*>(s.data), begin, end);
  }
}

__device__ __forceinline__ double as_double(float x) {
  return x;
}
__device__ __forceinline__ double as_double(double x) {
  return x;
}
__device__ __forceinline__ double as_double(bf16 x) {
  return bf16_to_float(x);
}

__device__ __forceinline__ void scale_element(float& x, double f) {
  x *= static_cast<float>(f);
}
__device__ __forceinline__ void scale_element(double& x, double f) {
  x *= f;
}
__device__ __forceinline__ void scale_element(bf16& x, double f) {
  x = float_to_bf16(bf16_to_float(x) * static_cast<float>(f));
}

// partials[chunk] = sum of squares of the chunk, in f64. Each thread takes
// kPerThread elements a block apart, unrolled so that their loads overlap.
__global__ void sum_squares_kernel(const GradSlot* slots, int num_slots, double* partials) {
  using BlockReduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename BlockReduce::TempStorage temp;
  double acc = 0;
  for_block_chunk(slots, num_slots, [&](auto* p, int64_t begin, int64_t end) {
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      int64_t i = begin + threadIdx.x + u * kBlock;
      if (i < end) {
        double x = as_double(p[i]);
        acc += x * x;
      }
    }
  });
  double total = BlockReduce(temp).Sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// Multiplies every element by factor: in f32 for f32 and bf16, in f64 for f64.
__global__ void scale_kernel(const GradSlot* slots, int num_slots, double factor) {
  for_block_chunk(slots, num_slots, [&](auto* p, int64_t begin, int64_t end) {
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      int64_t i = begin + threadIdx.x + u * kBlock;
      if (i < end) scale_element(p[i], factor);
    }
  });
}

}  // namespace

double sum_squares_cuda(const std::vector<Tensor>& grads) {
  SlotTable table = make_slot_table(grads);
  if (table.num_chunks == 0) return 0.0;
  Device device = grads.front().device();
  Tensor partials = Tensor::empty({static_cast<int64_t>(table.num_chunks)}, DType::F64, device);
  sum_squares_kernel<<<table.num_chunks, kBlock, 0, cuda::stream()>>>(table.slots, table.num_slots,
                                                                      partials.data<double>());
  FG_CUDA_CHECK(cudaGetLastError());

  Tensor result = Tensor::empty({1}, DType::F64, device);
  size_t temp_bytes = 0;
  FG_CUDA_CHECK(cub::DeviceReduce::Sum(nullptr, temp_bytes, partials.data<double>(),
                                       result.data<double>(), table.num_chunks, cuda::stream()));
  Tensor temp = Tensor::empty({static_cast<int64_t>((temp_bytes + 7) / 8)}, DType::F64, device);
  FG_CUDA_CHECK(cub::DeviceReduce::Sum(temp.raw_data(), temp_bytes, partials.data<double>(),
                                       result.data<double>(), table.num_chunks, cuda::stream()));
  double total = 0;
  FG_CUDA_CHECK(cudaMemcpyAsync(&total, result.raw_data(), sizeof(double), cudaMemcpyDeviceToHost,
                                cuda::stream()));
  FG_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));  // the one host sync
  return total;
}

void scale_cuda(const std::vector<Tensor>& grads, double factor) {
  SlotTable table = make_slot_table(grads);
  if (table.num_chunks == 0) return;
  scale_kernel<<<table.num_chunks, kBlock, 0, cuda::stream()>>>(table.slots, table.num_slots,
                                                                factor);
  FG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fg::ops::detail
