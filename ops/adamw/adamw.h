// AdamW with decoupled weight decay, in place:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + lr * wd * p
#pragma once

#include <cmath>
#include <vector>

#include "core/tensor.h"

namespace fg::ops {

struct AdamWHyper {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;  // the caller passes 0 for parameters it does not decay
  int64_t step = 1;           // 1-based, for bias correction
};

// param, grad, exp_avg, exp_avg_sq: same shape, contiguous; states f32/f64 like param
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                const Tensor& exp_avg_sq, const AdamWHyper& hyper);

// One parameter of a multi-tensor step; `decay` false skips weight decay for it
// (norm weights, biases).
struct AdamWTensors {
  Tensor param, grad, exp_avg, exp_avg_sq;
  bool decay = true;
};
// The same update for every entry, all on one device and of one dtype; on the
// GPU a single kernel launch updates all of them.
void adamw_step_multi(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper);

namespace detail {
// Checked entries; hyper.weight_decay applies where decay is set.
void adamw_cpu(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper);
void adamw_cuda(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper);

// The per-step scalars, computed once in f64 on the host.
struct AdamWCoeffs {
  double beta1, beta2, eps;
  double decay_keep;  // 1 - lr * wd, for entries with decay set
  double step_size;   // lr / (1 - beta1^t)
  double sqrt_bc2;    // sqrt(1 - beta2^t)
};
AdamWCoeffs adamw_coeffs(const AdamWHyper& hyper);

// One element, as torch.optim.AdamW does it: decay the pre-update p, then the
// Adam step. The CPU reference and the CUDA kernel share it, in F.
template <class F>
FG_HOST_DEVICE void adamw_update(F& p, F g, F& m, F& v, F beta1, F beta2, F eps, F decay_keep,
                                 F step_size, F sqrt_bc2) {
  p *= decay_keep;
  m = beta1 * m + (F(1) - beta1) * g;
  v = beta2 * v + (F(1) - beta2) * g * g;
#if defined(__CUDA_ARCH__)
  F root = sqrt(v);
#else
  F root = std::sqrt(v);
#endif
  p -= step_size * m / (root / sqrt_bc2 + eps);
}
}  // namespace detail

}  // namespace fg::ops
