// Fused multi-tensor AdamW on the GPU: every parameter of a step in one launch.
// The host lists each tensor's pointers and size and splits the tensors into
// fixed-size chunks; one block updates one chunk. Both tables go to the device
// in a single copy. The element math is detail::adamw_update, as on the CPU.
#include <cstring>
#include <vector>

#include "core/cuda_utils.h"
#include "ops/adamw/adamw.h"

namespace fg::ops::detail {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kChunk = 16 * kBlock;  // elements per block: 16 per thread

template <class F>
struct AdamWSlot {
  F* param;
  const F* grad;
  F* exp_avg;
  F* exp_avg_sq;
  int64_t numel;
  F decay_keep;  // 1 - lr * wd, or 1 for tensors without decay
};

struct ChunkRef {
  int64_t slot;
  int64_t start;
};

template <class F>
struct AdamWScalars {
  F beta1, beta2, eps, step_size, sqrt_bc2;
};

template <class F>
__global__ void adamw_multi_kernel(const AdamWSlot<F>* slots, const ChunkRef* chunks,
                                   AdamWScalars<F> c) {
  const ChunkRef chunk = chunks[blockIdx.x];
  const AdamWSlot<F> s = slots[chunk.slot];
  const int64_t end = min(chunk.start + kChunk, s.numel);
  for (int64_t i = chunk.start + threadIdx.x; i < end; i += blockDim.x) {
    F p = s.param[i], m = s.exp_avg[i], v = s.exp_avg_sq[i];
    adamw_update<F>(p, s.grad[i], m, v, c.beta1, c.beta2, c.eps, s.decay_keep, c.step_size,
                    c.sqrt_bc2);
    s.param[i] = p;
    s.exp_avg[i] = m;
    s.exp_avg_sq[i] = v;
  }
}

template <class F>
void launch_adamw(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper) {
  AdamWCoeffs c = adamw_coeffs(hyper);
  std::vector<AdamWSlot<F>> slots;
  std::vector<ChunkRef> chunks;
  for (const AdamWTensors& e : params) {
    int64_t n = e.param.numel();
    if (n == 0) continue;
    int64_t slot = static_cast<int64_t>(slots.size());
    slots.push_back({e.param.data<F>(), e.grad.data<F>(), e.exp_avg.data<F>(),
                     e.exp_avg_sq.data<F>(), n, static_cast<F>(e.decay ? c.decay_keep : 1.0)});
    for (int64_t start = 0; start < n; start += kChunk) chunks.push_back({slot, start});
  }
  if (chunks.empty()) return;
  FG_CHECK(chunks.size() < (size_t{1} << 31), "adamw: ", chunks.size(), " chunks exceed the grid");

  // One host buffer [slots | chunks], one copy. cudaMemcpyAsync from pageable
  // memory returns once the source is staged, so `host` may die after the call.
  size_t slot_bytes = slots.size() * sizeof(AdamWSlot<F>);
  size_t chunk_offset = (slot_bytes + alignof(ChunkRef) - 1) / alignof(ChunkRef) * alignof(ChunkRef);
  size_t total = chunk_offset + chunks.size() * sizeof(ChunkRef);
  std::vector<unsigned char> host(total);
  std::memcpy(host.data(), slots.data(), slot_bytes);
  std::memcpy(host.data() + chunk_offset, chunks.data(), chunks.size() * sizeof(ChunkRef));
  Device device = params[0].param.device();
  Tensor table = Tensor::empty({static_cast<int64_t>((total + 7) / 8)}, DType::F64, device);
  auto* base = static_cast<unsigned char*>(table.raw_data());
  FG_CUDA_CHECK(cudaMemcpyAsync(base, host.data(), total, cudaMemcpyHostToDevice, cuda::stream()));

  AdamWScalars<F> scalars{static_cast<F>(c.beta1), static_cast<F>(c.beta2), static_cast<F>(c.eps),
                          static_cast<F>(c.step_size), static_cast<F>(c.sqrt_bc2)};
  adamw_multi_kernel<F><<<static_cast<unsigned>(chunks.size()), kBlock, 0, cuda::stream()>>>(
      reinterpret_cast<const AdamWSlot<F>*>(base),
      reinterpret_cast<const ChunkRef*>(base + chunk_offset), scalars);
  FG_CUDA_CHECK(cudaGetLastError());
  // `table` is freed stream-ordered (cudaFreeAsync), after the kernel has read it.
}

}  // namespace

void adamw_cuda(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper) {
  dispatch_float("adamw", params[0].param.dtype(),
                 [&]<class F>() { launch_adamw<F>(params, hyper); });
}

}  // namespace fg::ops::detail
