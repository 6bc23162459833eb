// AdamW with decoupled weight decay, in place:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + lr * wd * p
#pragma once

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

}  // namespace fg::ops
