// Fused multi-tensor AdamW on the GPU: every parameter of a step in one launch.
// The host lists each tensor (param, grad, exp_avg, exp_avg_sq pointers, size,
// decay factor, index of its first chunk) in one small device table; each block
// updates one fixed-size chunk and finds its tensor by binary search. The
// element math is detail::adamw_update, shared with the CPU reference.
#include <vector>

#include "core/cuda_utils.h"
#include "ops/adamw/adamw.h"

namespace fg::ops::detail {
namespace {

constexpr int kBlock = 256;
constexpr int kPerThread = 16;
constexpr int64_t kChunkElems = kPerThread * kBlock;  // elements per block

template <class F>
struct AdamWSlot {
  F* param;
  const F* grad;
  F* exp_avg;
  F* exp_avg_sq;
  int64_t numel;
  int64_t first_chunk;  // chunks of earlier slots come first
  F decay_keep;         // 1 - lr * wd, or 1 for tensors without decay
};

template <class F>
struct AdamWScalars {
  F beta1, beta2, eps, step_size, sqrt_bc2;
};

template <class F>
__global__ void adamw_multi_kernel(const AdamWSlot<F>* slots, int num_slots, AdamWScalars<F> c) {
  // This block's slot: the last one whose first_chunk <= blockIdx.x.
  int lo = 0, hi = num_slots - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (slots[mid].first_chunk <= static_cast<int64_t>(blockIdx.x))
      lo = mid;
    else
      hi = mid - 1;
  }
  const AdamWSlot<F> s = slots[lo];
  const int64_t begin = (blockIdx.x - s.first_chunk) * kChunkElems;
  const int64_t end = min(begin + kChunkElems, s.numel);
  // kPerThread elements a block apart, unrolled so that their loads overlap.
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    int64_t i = begin + threadIdx.x + u * kBlock;
    if (i >= end) break;
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
  int64_t chunks = 0;
  for (const AdamWTensors& e : params) {
    int64_t n = e.param.numel();
    if (n == 0) continue;
    slots.push_back({e.param.data<F>(), e.grad.data<F>(), e.exp_avg.data<F>(),
                     e.exp_avg_sq.data<F>(), n, chunks,
                     static_cast<F>(e.decay ? c.decay_keep : 1.0)});
    chunks += (n + kChunkElems - 1) / kChunkElems;
  }
  if (chunks == 0) return;
  FG_CHECK(chunks < (int64_t{1} << 31), "adamw: ", chunks, " chunks exceed the CUDA grid");

  // cudaMemcpyAsync from pageable memory returns once the source is staged, so
  // `slots` may die after it; `table` is freed stream-ordered, after the kernel.
  size_t bytes = slots.size() * sizeof(AdamWSlot<F>);
  Tensor table =
      Tensor::empty({static_cast<int64_t>((bytes + 7) / 8)}, DType::F64, params[0].param.device());
  FG_CUDA_CHECK(cudaMemcpyAsync(table.raw_data(), slots.data(), bytes, cudaMemcpyHostToDevice,
                                cuda::stream()));
  AdamWScalars<F> scalars{static_cast<F>(c.beta1), static_cast<F>(c.beta2), static_cast<F>(c.eps),
                          static_cast<F>(c.step_size), static_cast<F>(c.sqrt_bc2)};
  adamw_multi_kernel<F><<<static_cast<unsigned>(chunks), kBlock, 0, cuda::stream()>>>(
      static_cast<const AdamWSlot<F>*>(table.raw_data()), static_cast<int>(slots.size()), scalars);
  FG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void adamw_cuda(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper) {
  dispatch_float("adamw", params[0].param.dtype(),
                 [&]<class F>() { launch_adamw<F>(params, hyper); });
}

}  // namespace fg::ops::detail
