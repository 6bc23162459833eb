// Global gradient norm and scaling on the GPU, multi-tensor (multi_tensor.cuh):
// the gradients (pointer, size, dtype) travel in kernel-parameter packs, each
// block takes one chunk. The sum of squares is accumulated in f64: each block
// writes its partial with cub::BlockReduce, cub::DeviceReduce sums the partials
// on the device, and nothing is read back, so the whole thing can be captured in
// a CUDA graph. GradNormInBackward writes the same partials gradient by gradient,
// on the side stream as backward finishes each (SideNorm).
#include <cub/block/block_reduce.cuh>
#include <cub/device/device_reduce.cuh>
#include <memory>
#include <vector>

#include "core/cuda_utils.h"
#include "core/multi_tensor.cuh"
#include "ops/grad_norm/grad_norm.h"

namespace fg::ops::detail {
namespace {

using multi_tensor::DeviceScalar;
using multi_tensor::kBlock;
// Elements per thread: 32 read the gradients at 4.5 TB/s (seed model, 0.94 ms per step;
// 16: 0.98, 8: 1.28; bench/RESULTS.md, session 10).
constexpr int kPerThread = 32;
using multi_tensor::SlotPack;

struct GradSlot {
  void* data;
  int64_t numel;
  int64_t first_chunk;
  DType dtype;
};

std::vector<GradSlot> grad_slots(const std::vector<Tensor>& grads) {
  std::vector<GradSlot> slots;
  for (const Tensor& g : grads) slots.push_back({g.raw_data(), g.numel(), 0, g.dtype()});
  return slots;
}

// Calls f(p, begin, end) with the block's slot's data typed by its dtype and this
// block's element range; the switch runs once per block.
template <class F>
__device__ __forceinline__ void for_block_chunk(const SlotPack<GradSlot>& pack, F&& f) {
  const GradSlot& s = multi_tensor::find_slot(pack);
  int64_t begin, end;
  multi_tensor::chunk_range<kPerThread>(s, begin, end);
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

// partials[chunk] = sum of squares of the chunk, in f64 (partials starts at this
// pack's first chunk). Each thread takes kPerThread elements a block apart,
// unrolled so that their loads overlap.
__global__ void sum_squares_kernel(const __grid_constant__ SlotPack<GradSlot> pack,
                                   double* partials) {
  using BlockReduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename BlockReduce::TempStorage temp;
  double acc = 0;
  for_block_chunk(pack, [&](auto* p, int64_t begin, int64_t end) {
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

template <class F>
__global__ void sqrt_kernel(const double* sum_squares, F* norm) {
  *norm = static_cast<F>(sqrt(*sum_squares));
}

// Multiplies every element by the factor read from device memory: in f32 for f32
// and bf16, in f64 for f64. A factor of exactly 1 (no clipping) costs no traffic.
__global__ void scale_kernel(const __grid_constant__ SlotPack<GradSlot> pack,
                             DeviceScalar factor_ref) {
  const double factor = multi_tensor::load(factor_ref, 1.0);
  if (factor == 1.0) return;
  for_block_chunk(pack, [&](auto* p, int64_t begin, int64_t end) {
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      int64_t i = begin + threadIdx.x + u * kBlock;
      if (i < end) scale_element(p[i], factor);
    }
  });
}

}  // namespace

namespace {

// Writes partials[c] for every chunk c of grads (in launch_packs' order) on `stream`.
void sum_squares_partials(const std::vector<Tensor>& grads, double* partials, cudaStream_t stream) {
  multi_tensor::launch_packs<kPerThread>(
      "grad_norm", grad_slots(grads),
      [&](const SlotPack<GradSlot>& pack, unsigned grid, int64_t base) {
        sum_squares_kernel<<<grid, kBlock, 0, stream>>>(pack, partials + base);
        FG_CUDA_CHECK(cudaGetLastError());
      });
}

int64_t count_chunks(const std::vector<Tensor>& grads) {
  int64_t chunks = 0;
  for (const Tensor& g : grads) chunks += multi_tensor::num_chunks<kPerThread>(g.numel());
  return chunks;
}

// CUB's scratch for summing `chunks` partials.
Tensor reduce_temp(int64_t chunks, Device device, size_t& bytes) {
  bytes = 0;
  FG_CUDA_CHECK(cub::DeviceReduce::Sum(nullptr, bytes, static_cast<const double*>(nullptr),
                                       static_cast<double*>(nullptr), chunks, cuda::stream()));
  return Tensor::empty({static_cast<int64_t>((bytes + 7) / 8)}, DType::F64, device);
}

// () f64: the partials summed in a fixed order (CUB's device reduction is deterministic).
Tensor sum_partials(const Tensor& partials, const Tensor& temp, size_t temp_bytes) {
  Tensor result = Tensor::empty({}, DType::F64, partials.device());
  FG_CUDA_CHECK(cub::DeviceReduce::Sum(temp.raw_data(), temp_bytes, partials.data<double>(),
                                       result.data<double>(), partials.numel(), cuda::stream()));
  return result;
}

Tensor sqrt_as(const Tensor& sum, DType dtype) {
  Tensor norm = Tensor::empty({}, dtype, sum.device());
  dispatch_float("grad_norm", dtype, [&]<class F>() {
    sqrt_kernel<F><<<1, 1, 0, cuda::stream()>>>(sum.data<double>(), norm.data<F>());
  });
  FG_CUDA_CHECK(cudaGetLastError());
  return norm;
}

}  // namespace

Tensor sum_squares_cuda(const std::vector<Tensor>& grads) {
  Device device = grads.front().device();
  const int64_t chunks = count_chunks(grads);
  if (chunks == 0) return Tensor::zeros({}, DType::F64, device);
  Tensor partials = Tensor::empty({chunks}, DType::F64, device);
  sum_squares_partials(grads, partials.data<double>(), cuda::stream());
  size_t temp_bytes = 0;
  Tensor temp = reduce_temp(chunks, device, temp_bytes);
  return sum_partials(partials, temp, temp_bytes);
}

Tensor grad_norm_cuda(const std::vector<Tensor>& grads, DType dtype) {
  return sqrt_as(sum_squares_cuda(grads), dtype);
}

// Every gradient's partials have a fixed place in one buffer (its chunks after those of
// the gradients before it, as sum_squares_cuda lays them out), so they may be written
// in any order, on either stream, and sum to the same bits.
struct SideNorm {
  std::vector<Tensor> grads;
  std::vector<int64_t> first_chunk;  // per gradient
  Tensor partials, temp;
  size_t temp_bytes = 0;
  cudaEvent_t ready = nullptr, joined = nullptr;
  bool side_used = false;  // this pass queued work on the side stream

  explicit SideNorm(const std::vector<Tensor>& g) : grads(g) {
    const Device device = grads.front().device();
    int64_t chunks = 0;
    for (const Tensor& t : grads) {
      first_chunk.push_back(chunks);
      chunks += multi_tensor::num_chunks<kPerThread>(t.numel());
    }
    partials = Tensor::zeros({chunks}, DType::F64, device);
    temp = reduce_temp(chunks, device, temp_bytes);
    FG_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    FG_CUDA_CHECK(cudaEventCreateWithFlags(&joined, cudaEventDisableTiming));
  }
  ~SideNorm() {
    cudaEventDestroy(ready);
    cudaEventDestroy(joined);
  }
};

std::shared_ptr<SideNorm> side_norm_cuda(const std::vector<Tensor>& grads) {
  return std::make_shared<SideNorm>(grads);
}

void side_norm_count_cuda(SideNorm& s, size_t begin, size_t end, bool on_side) {
  cudaStream_t stream = cuda::stream();
  if (on_side) {
    // The side stream starts after everything queued so far, which wrote the gradient.
    stream = cuda::side_stream();
    FG_CUDA_CHECK(cudaEventRecord(s.ready, cuda::stream()));
    FG_CUDA_CHECK(cudaStreamWaitEvent(stream, s.ready));
    s.side_used = true;
  }
  // Consecutive gradients' partials are consecutive (launch_packs' order), so a run of
  // them lands where one launch per gradient would have put it.
  const std::vector<Tensor> run(s.grads.begin() + static_cast<std::ptrdiff_t>(begin),
                                s.grads.begin() + static_cast<std::ptrdiff_t>(end));
  sum_squares_partials(run, s.partials.data<double>() + s.first_chunk[begin], stream);
}

Tensor side_norm_finish_cuda(SideNorm& s, DType dtype) {
  if (s.side_used) {
    FG_CUDA_CHECK(cudaEventRecord(s.joined, cuda::side_stream()));
    FG_CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), s.joined));
    s.side_used = false;
  }
  if (s.partials.numel() == 0)
    return sqrt_as(Tensor::zeros({}, DType::F64, s.partials.device()), dtype);
  return sqrt_as(sum_partials(s.partials, s.temp, s.temp_bytes), dtype);
}

void scale_cuda(const std::vector<Tensor>& grads, const Tensor& factor) {
  multi_tensor::DeviceScalar factor_ref = multi_tensor::device_scalar(factor);
  multi_tensor::launch_packs<kPerThread>(
      "scale_grads", grad_slots(grads),
      [&](const SlotPack<GradSlot>& pack, unsigned grid, int64_t) {
        scale_kernel<<<grid, kBlock, 0, cuda::stream()>>>(pack, factor_ref);
        FG_CUDA_CHECK(cudaGetLastError());
      });
}

}  // namespace fg::ops::detail
