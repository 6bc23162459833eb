// Global gradient norm and scaling on the GPU, multi-tensor: the host lists the
// gradients (pointer, size, dtype) and splits them into fixed-size chunks, one
// block per chunk, so a whole model is one launch. The norm's sum of squares is
// accumulated in f64: each block writes its partial with cub::BlockReduce, then
// cub::DeviceReduce sums the partials and the host reads one double (one sync).
#include <cub/block/block_reduce.cuh>
#include <cub/device/device_reduce.cuh>
#include <cstring>
#include <vector>

#include "core/cuda_utils.h"
#include "ops/grad_norm/grad_norm.h"

namespace fg::ops::detail {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kChunk = 16 * kBlock;  // elements per block: 16 per thread

struct GradSlot {
  void* data;
  int64_t numel;
  DType dtype;
};

struct ChunkRef {
  int64_t slot;
  int64_t start;
};

// The slot and chunk tables of one call, on the device.
struct ChunkTable {
  Tensor storage;  // owns the device copy
  const GradSlot* slots = nullptr;
  const ChunkRef* chunks = nullptr;
  unsigned num_chunks = 0;
};

// Builds both tables on the host and uploads them in one copy. cudaMemcpyAsync
// from pageable memory returns once the source is staged, so the host buffer may
// die after it; the device buffer is freed stream-ordered after the kernels.
ChunkTable make_chunk_table(const std::vector<Tensor>& grads) {
  std::vector<GradSlot> slots;
  std::vector<ChunkRef> chunks;
  for (const Tensor& g : grads) {
    int64_t n = g.numel();
    if (n == 0) continue;
    int64_t slot = static_cast<int64_t>(slots.size());
    slots.push_back({g.raw_data(), n, g.dtype()});
    for (int64_t start = 0; start < n; start += kChunk) chunks.push_back({slot, start});
  }
  ChunkTable table;
  if (chunks.empty()) return table;
  FG_CHECK(chunks.size() < (size_t{1} << 31), "grad_norm: ", chunks.size(),
           " chunks exceed the grid");
  size_t slot_bytes = slots.size() * sizeof(GradSlot);
  size_t chunk_offset = (slot_bytes + alignof(ChunkRef) - 1) / alignof(ChunkRef) * alignof(ChunkRef);
  size_t total = chunk_offset + chunks.size() * sizeof(ChunkRef);
  std::vector<unsigned char> host(total);
  std::memcpy(host.data(), slots.data(), slot_bytes);
  std::memcpy(host.data() + chunk_offset, chunks.data(), chunks.size() * sizeof(ChunkRef));
  table.storage = Tensor::empty({static_cast<int64_t>((total + 7) / 8)}, DType::F64,
                                grads.front().device());
  auto* base = static_cast<unsigned char*>(table.storage.raw_data());
  FG_CUDA_CHECK(cudaMemcpyAsync(base, host.data(), total, cudaMemcpyHostToDevice, cuda::stream()));
  table.slots = reinterpret_cast<const GradSlot*>(base);
  table.chunks = reinterpret_cast<const ChunkRef*>(base + chunk_offset);
  table.num_chunks = static_cast<unsigned>(chunks.size());
  return table;
}

__device__ __forceinline__ double load_double(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F64: return static_cast<const double*>(p)[i];
    default: return bf16_to_float(static_cast<const bf16*>(p)[i]);
  }
}

// partials[chunk] = sum of squares of the chunk's elements, in f64.
__global__ void sum_squares_kernel(const GradSlot* slots, const ChunkRef* chunks,
                                   double* partials) {
  using BlockReduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename BlockReduce::TempStorage temp;
  const ChunkRef chunk = chunks[blockIdx.x];
  const GradSlot s = slots[chunk.slot];
  const int64_t end = min(chunk.start + kChunk, s.numel);
  double acc = 0;
  for (int64_t i = chunk.start + threadIdx.x; i < end; i += blockDim.x) {
    double x = load_double(s.data, s.dtype, i);
    acc += x * x;
  }
  double total = BlockReduce(temp).Sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// Multiplies every element by factor: in f32 for f32 and bf16, in f64 for f64.
__global__ void scale_kernel(const GradSlot* slots, const ChunkRef* chunks, double factor) {
  const ChunkRef chunk = chunks[blockIdx.x];
  const GradSlot s = slots[chunk.slot];
  const int64_t end = min(chunk.start + kChunk, s.numel);
  const float f32 = static_cast<float>(factor);
  for (int64_t i = chunk.start + threadIdx.x; i < end; i += blockDim.x) {
    switch (s.dtype) {
      case DType::F32: static_cast<float*>(s.data)[i] *= f32; break;
      case DType::F64: static_cast<double*>(s.data)[i] *= factor; break;
      default: {
        bf16* p = static_cast<bf16*>(s.data);
        p[i] = float_to_bf16(bf16_to_float(p[i]) * f32);
      }
    }
  }
}

}  // namespace

double sum_squares_cuda(const std::vector<Tensor>& grads) {
  ChunkTable table = make_chunk_table(grads);
  if (table.num_chunks == 0) return 0.0;
  Device device = grads.front().device();
  Tensor partials = Tensor::empty({static_cast<int64_t>(table.num_chunks)}, DType::F64, device);
  sum_squares_kernel<<<table.num_chunks, kBlock, 0, cuda::stream()>>>(table.slots, table.chunks,
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
  ChunkTable table = make_chunk_table(grads);
  if (table.num_chunks == 0) return;
  scale_kernel<<<table.num_chunks, kBlock, 0, cuda::stream()>>>(table.slots, table.chunks, factor);
  FG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fg::ops::detail
