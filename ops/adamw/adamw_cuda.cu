// Fused multi-tensor AdamW on the GPU: up to 256 parameters per launch
// (multi_tensor.cuh). Each tensor's slot (param, grad, exp_avg, exp_avg_sq and
// optional bf16 copy pointers, size, decay flag) travels in a kernel-parameter pack; each block
// updates one fixed-size chunk. The step's values (lr, t, gradient norm, loss)
// are read from device memory by every block, so the launch can be captured in
// a CUDA graph and replayed with the current values. The element math is
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
using multi_tensor::kPerThread;
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

template <class F>
__global__ void adamw_multi_kernel(const __grid_constant__ SlotPack<AdamWSlot<F>> pack,
                                   const __grid_constant__ AdamWStepRefs step) {
  // Thread 0 turns the step's values into coefficients once per block, in f64
  // as the CPU reference does; the few loads and pows are nothing next to the
  // chunk's traffic, and no separate kernel or buffer is needed.
  __shared__ AdamWCoeffs coeffs;
  if (threadIdx.x == 0) {
    AdamWStepValues values{step.lr_step[0], step.lr_step[1],
                           multi_tensor::load(step.grad_norm, 0.0),
                           multi_tensor::load(step.loss, 0.0)};
    coeffs = adamw_coeffs(step.hyper, values, step.max_norm);
  }
  __syncthreads();
  const AdamWCoeffs c = coeffs;
  if (c.skip) return;  // a non-finite norm or loss: nothing changes

  const AdamWSlot<F>& s = multi_tensor::find_slot(pack);
  int64_t begin, end;
  multi_tensor::chunk_range(s, begin, end);
  const F beta1 = static_cast<F>(step.hyper.beta1), beta2 = static_cast<F>(step.hyper.beta2);
  const F eps = static_cast<F>(step.hyper.eps), clip = static_cast<F>(c.clip);
  const F keep = static_cast<F>(s.decay ? c.decay_keep : 1.0);
  const F step_size = static_cast<F>(c.step_size), sqrt_bc2 = static_cast<F>(c.sqrt_bc2);
  // kPerThread elements a block apart, unrolled so that their loads overlap.
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    int64_t i = begin + threadIdx.x + u * kBlock;
    if (i >= end) break;
    F p = s.param[i], m = s.exp_avg[i], v = s.exp_avg_sq[i];
    adamw_update<F>(p, s.grad[i] * clip, m, v, beta1, beta2, eps, keep, step_size, sqrt_bc2);
    s.param[i] = p;
    if (s.copy) s.copy[i] = from_compute<bf16>(p);
    s.exp_avg[i] = m;
    s.exp_avg_sq[i] = v;
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
  multi_tensor::launch_packs(
      "adamw", slots, [&](const SlotPack<AdamWSlot<F>>& pack, unsigned grid, int64_t) {
        adamw_multi_kernel<F><<<grid, kBlock, 0, cuda::stream()>>>(pack, step);
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
