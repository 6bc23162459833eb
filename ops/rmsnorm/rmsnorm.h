// y = x / sqrt(mean(x^2) + eps) * weight over the last dimension; statistics in
// fp32 (f64 for f64 inputs).
#pragma once

#include "core/tensor.h"

namespace fg::ops {

struct RMSNormOut {
  Tensor y;     // like x
  Tensor rstd;  // (rows) = 1 / sqrt(mean(x^2) + eps); f32, or f64 for f64 inputs
};
// x (..., D), weight (D)
RMSNormOut rmsnorm_forward(const Tensor& x, const Tensor& weight, double eps);

struct RMSNormGrads {
  Tensor dx;       // like x
  Tensor dweight;  // (D)
};
RMSNormGrads rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                              const Tensor& rstd);

}  // namespace fg::ops
