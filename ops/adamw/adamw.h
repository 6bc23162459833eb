// AdamW with decoupled weight decay, in place:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + lr * wd * p
// The per-step values (lr, t, and optionally the gradient norm for clipping and
// the non-finite skip) come from the host (AdamWHyper) or from device memory
// (AdamWStepInputs, what a step captured in a CUDA graph uses).
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
// (norm weights, biases). param_copy (optional, bf16 for an f32 param, same
// shape): gets the updated param rounded to bf16, so that a mixed-precision
// forward reads its weights without a cast pass of its own.
struct AdamWTensors {
  Tensor param, grad, exp_avg, exp_avg_sq;
  bool decay = true;
  Tensor param_copy{};
};
// The same update for every entry, all on one device and of one dtype; on the
// GPU one kernel launch per 256 entries.
void adamw_step_multi(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper);

// What changes from step to step, read from device memory (the params' device)
// when the update runs, so a step captured in a CUDA graph replays with the
// current values. Nothing is read back to the host.
struct AdamWStepInputs {
  Tensor lr_step;    // (2) f64: learning rate, 1-based step count t (bias correction)
  Tensor grad_norm;  // one f32/f64 element: the global gradient norm (from grad_norm), or undefined
  Tensor loss;       // one f32/f64 element, or undefined: the update is skipped (params and
                     //   states untouched) when grad_norm or loss is not finite
  double max_norm = 0;  // > 0 (needs grad_norm): where norm > max_norm the gradient is scaled
                        //   by max_norm / (norm + 1e-6) inside the update, as clip_grad_norm does
};
// beta1, beta2, eps, weight_decay from hyper (its lr and step are ignored). The
// values in the tensors are not checked (the device cannot throw).
void adamw_step_multi(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper,
                      const AdamWStepInputs& inputs);

namespace detail {
// Checked entries and inputs; hyper.weight_decay applies where decay is set.
void adamw_cpu(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper,
               const AdamWStepInputs& inputs);
void adamw_cuda(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper,
                const AdamWStepInputs& inputs);

// The step's values as read from AdamWStepInputs (0 for an undefined grad_norm or loss).
struct AdamWStepValues {
  double lr, t, grad_norm, loss;
};
// The per-step scalars, in f64: the CPU reference computes them on the host, the
// CUDA kernel on the device from device memory, with the same code.
struct AdamWCoeffs {
  double decay_keep;  // 1 - lr * wd, for entries with decay set
  double step_size;   // lr / (1 - beta1^t)
  double sqrt_bc2;    // sqrt(1 - beta2^t)
  double clip;        // the gradient's scale, 1 without clipping
  bool skip;          // grad_norm or loss is not finite: no update at all
};
FG_HOST_DEVICE AdamWCoeffs adamw_coeffs(const AdamWHyper& h, const AdamWStepValues& s,
                                        double max_norm) {
#if defined(__CUDA_ARCH__)
  using ::isfinite, ::pow, ::sqrt;
  const double lr_wd = __dmul_rn(s.lr, h.weight_decay);  // rounded as on the host, not fused
#else
  using std::isfinite, std::pow, std::sqrt;
  const double lr_wd = s.lr * h.weight_decay;
#endif
  AdamWCoeffs c;
  c.decay_keep = 1.0 - lr_wd;
  c.step_size = s.lr / (1.0 - pow(h.beta1, s.t));
  c.sqrt_bc2 = sqrt(1.0 - pow(h.beta2, s.t));
  c.clip = max_norm > 0 && s.grad_norm > max_norm ? max_norm / (s.grad_norm + 1e-6) : 1.0;
  c.skip = !isfinite(s.grad_norm) || !isfinite(s.loss);
  return c;
}

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
