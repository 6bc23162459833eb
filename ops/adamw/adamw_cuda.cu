// Fused multi-tensor AdamW on the GPU: up to 256 parameters per launch
// (multi_tensor.cuh). Each tensor's slot (param, grad, exp_avg, exp_avg_sq and
// optional bf16 copy pointers, size, decay flag) travels in a kernel-parameter
// pack; each block updates one fixed-size chunk. The step's values (lr, t,
// gradient norm, loss) are read from device memory by a one-thread kernel that
// leaves the coefficients there, so the launches can be captured in a CUDA graph
// and replayed with the current values. The element math is
// detail::adamw_update, shared with the CPU reference.
#include <vector>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/adamw/adamw.h"
#include "core/multi_tensor.cuh"

namespace fg::ops::detail {
namespace {

using multi_tensor::DeviceScalar;
using multi_tensor::kBlock;
// Elements per thread: 4, one 16-byte pack of each f32 tensor (more, smaller blocks). The
// seed model's update takes 7.67 ms per step with 4, 7.99 with 8, 8.23 with 16, 9.1 with 32
// (bench/RESULTS.md, session 10).
constexpr int kPerThread = 4;
constexpr int64_t kChunkElems = multi_tensor::kChunkElems<kPerThread>;
using multi_tensor::SlotPack;

template <class F>
struct AdamWSlot {
  F* param;
  const F* grad;
  F* exp_avg;
  F* exp_avg_sq;
  bf16* copy;  // null: none (always for f64)
  int64_t numel;
  int64_t first_chunk;
  bool decay;
};

// Where the step's values live, and the constants.
struct AdamWStepRefs {
  AdamWHyper hyper;        // beta1, beta2, eps, weight_decay
  const double* lr_step;   // (2): lr, t
  DeviceScalar grad_norm;  // undefined: 0
  DeviceScalar loss;       // undefined: 0
  double max_norm;
};

// The pack rounded to bf16, stored at once (8 bytes for 4 floats).
template <class F, int kVec>
__device__ __forceinline__ void store_rounded(bf16* p, const Pack<F, kVec>& x) {
  Pack<bf16, kVec> r;
#pragma unroll
  for (int k = 0; k < kVec; ++k) r.v[k] = from_compute<bf16>(x.v[k]);
  store_pack<kVec>(p, r);
}

// Whether the slot's tensors start on 16-byte boundaries (the copy on its pack's
// size), so that whole chunks can move in 16-byte packs.
template <class F>
__device__ __forceinline__ bool aligned(const AdamWSlot<F>& s) {
  const auto a = [](const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; };
  return a(s.param, 16) && a(s.grad, 16) && a(s.exp_avg, 16) && a(s.exp_avg_sq, 16) &&
         a(s.copy, 2 * 16 / sizeof(F));
}

// The step's values turned into coefficients once, in f64 as the CPU reference does, by
// one thread before the update: in every block (a quarter-million at the seed size) the
// loads and pows held the block's first loads back.
__global__ void adamw_coeffs_kernel(const __grid_constant__ AdamWStepRefs step, AdamWCoeffs* out) {
  AdamWStepValues values{step.lr_step[0], step.lr_step[1], multi_tensor::load(step.grad_norm, 0.0),
                         multi_tensor::load(step.loss, 0.0)};
  *out = adamw_coeffs(step.hyper, values, step.max_norm);
}

template <class F>
__global__ void adamw_multi_kernel(const __grid_constant__ SlotPack<AdamWSlot<F>> pack,
                                   const __grid_constant__ AdamWStepRefs step,
                                   const AdamWCoeffs* coeffs) {
  const AdamWCoeffs c = *coeffs;
  if (c.skip) return;  // a non-finite norm or loss: nothing changes

  const AdamWSlot<F>& s = multi_tensor::find_slot(pack);
  int64_t begin, end;
  multi_tensor::chunk_range<kPerThread>(s, begin, end);
  const F beta1 = static_cast<F>(step.hyper.beta1), beta2 = static_cast<F>(step.hyper.beta2);
  const F eps = static_cast<F>(step.hyper.eps), clip = static_cast<F>(c.clip);
  const F keep = static_cast<F>(s.decay ? c.decay_keep : 1.0);
  const F step_size = static_cast<F>(c.step_size), sqrt_bc2 = static_cast<F>(c.sqrt_bc2);
  auto update = [&](F& p, F g, F& m, F& v) {
    adamw_update<F>(p, g * clip, m, v, beta1, beta2, eps, keep, step_size, sqrt_bc2);
  };
  // Every load of the thread is issued before the first store (the pointers may
  // alias as far as the compiler knows, so it would not hoist them itself).
  constexpr int kVec = kPackOf<F>;  // elements per 16-byte load
  constexpr int kVecs = kPerThread / kVec;
  if (end - begin == kChunkElems && aligned(s)) {
    // A whole chunk of 16-byte-aligned tensors: kVecs 16-byte packs per tensor
    // per thread, a block apart.
    Pack<F, kVec> p[kVecs], g[kVecs], m[kVecs], v[kVecs];
#pragma unroll
    for (int u = 0; u < kVecs; ++u) {
      const int64_t i = begin + (threadIdx.x + u * kBlock) * kVec;
      p[u] = load_pack<kVec>(s.param + i);
      g[u] = load_pack<kVec>(s.grad + i);
      m[u] = load_pack<kVec>(s.exp_avg + i);
      v[u] = load_pack<kVec>(s.exp_avg_sq + i);
    }
#pragma unroll
    for (int u = 0; u < kVecs; ++u) {
      const int64_t i = begin + (threadIdx.x + u * kBlock) * kVec;
#pragma unroll
      for (int k = 0; k < kVec; ++k) update(p[u].v[k], g[u].v[k], m[u].v[k], v[u].v[k]);
      store_pack<kVec>(s.param + i, p[u]);
      store_pack<kVec>(s.exp_avg + i, m[u]);
      store_pack<kVec>(s.exp_avg_sq + i, v[u]);
      if (s.copy) store_rounded(s.copy + i, p[u]);
    }
    return;
  }
  // Otherwise (a chunk's tail, an unaligned ZeRO piece) element by element,
  // kPerThread elements a block apart.
  F p[kPerThread], g[kPerThread], m[kPerThread], v[kPerThread];
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    const int64_t i = begin + threadIdx.x + u * kBlock;
    if (i >= end) break;
    p[u] = s.param[i];
    g[u] = s.grad[i];
    m[u] = s.exp_avg[i];
    v[u] = s.exp_avg_sq[i];
  }
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    const int64_t i = begin + threadIdx.x + u * kBlock;
    if (i >= end) break;
    update(p[u], g[u], m[u], v[u]);
    s.param[i] = p[u];
    s.exp_avg[i] = m[u];
    s.exp_avg_sq[i] = v[u];
    if (s.copy) s.copy[i] = from_compute<bf16>(p[u]);
  }
}

template <class F>
void launch_adamw(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper,
                  const AdamWStepInputs& inputs) {
  std::vector<AdamWSlot<F>> slots;
  for (const AdamWTensors& e : params)
    slots.push_back({e.param.data<F>(), e.grad.data<F>(), e.exp_avg.data<F>(),
                     e.exp_avg_sq.data<F>(),
                     e.param_copy.defined() ? e.param_copy.data<bf16>() : nullptr,
                     e.param.numel(), 0, e.decay});
  AdamWStepRefs step{hyper, inputs.lr_step.data<double>(),
                     multi_tensor::device_scalar(inputs.grad_norm),
                     multi_tensor::device_scalar(inputs.loss), inputs.max_norm};
  const Tensor coeffs = Tensor::empty(
      {static_cast<int64_t>((sizeof(AdamWCoeffs) + 7) / 8)}, DType::F64, params[0].param.device());
  AdamWCoeffs* c = reinterpret_cast<AdamWCoeffs*>(coeffs.raw_data());
  adamw_coeffs_kernel<<<1, 1, 0, cuda::stream()>>>(step, c);
  FG_CUDA_CHECK(cudaGetLastError());
  multi_tensor::launch_packs<kPerThread>(
      "adamw", slots, [&](const SlotPack<AdamWSlot<F>>& pack, unsigned grid, int64_t) {
        adamw_multi_kernel<F><<<grid, kBlock, 0, cuda::stream()>>>(pack, step, c);
        FG_CUDA_CHECK(cudaGetLastError());
      });
}

}  // namespace

void adamw_cuda(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper,
                const AdamWStepInputs& inputs) {
  dispatch_float("adamw", params[0].param.dtype(),
                 [&]<class F>() { launch_adamw<F>(params, hyper, inputs); });
}

}  // namespace fg::ops::detail
