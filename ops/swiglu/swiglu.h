// SwiGLU on the gate/up GEMM's output: gu = [g | u] along the last dim,
// out = silu(g) * u with silu(g) = g * sigmoid(g).
#pragma once

#include "core/tensor.h"

namespace fg::ops {

// gu (..., 2F) -> out (..., F)
Tensor swiglu_forward(const Tensor& gu);
// dout (..., F), gu (..., 2F) -> dgu (..., 2F)
Tensor swiglu_backward(const Tensor& dout, const Tensor& gu);

}  // namespace fg::ops
