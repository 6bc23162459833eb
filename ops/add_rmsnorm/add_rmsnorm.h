// Residual add fused with RMSNorm: h = x + residual, y = rmsnorm(h) * weight.
// Backward keeps h and rstd only. Without a residual (undefined) h is x itself, not
// copied: the norm of a residual stream that a product's epilogue already summed
// (ops::linear_forward's residual), whose backward still adds dh in the same pass.
#pragma once

#include "core/tensor.h"

namespace fg::ops {

struct AddRMSNormOut {
  Tensor y;     // (..., D)
  Tensor h;     // (..., D), the new residual stream
  Tensor rstd;  // (rows)
};
AddRMSNormOut add_rmsnorm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight,
                                  double eps);

struct AddRMSNormGrads {
  Tensor dx;       // = dresidual: dh + the gradient through the norm
  Tensor dweight;  // (D)
};
// dh (the gradient arriving at h from later uses) may be undefined. dweight_into,
// dweight_add: as rmsnorm_backward's (ops/rmsnorm).
AddRMSNormGrads add_rmsnorm_backward(const Tensor& dy, const Tensor& dh, const Tensor& h,
                                     const Tensor& weight, const Tensor& rstd,
                                     const Tensor& dweight_into = Tensor(),
                                     bool dweight_add = false);

}  // namespace fg::ops
