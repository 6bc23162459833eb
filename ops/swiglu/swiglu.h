// SwiGLU on the gate/up GEMM's output: gu = [g | u] along the last dim,
// out = silu(g) * u with silu(g) = g * sigmoid(g).
#pragma once

#include "core/tensor.h"

namespace fg::ops {

// gu (..., 2F) -> out (..., F)
Tensor swiglu_forward(const Tensor& gu);
// dout (..., F), gu (..., 2F) -> dgu (..., 2F)
Tensor swiglu_backward(const Tensor& dout, const Tensor& gu);

namespace detail {
// Checked, contiguous operands; outputs allocated by the caller.
void swiglu_forward_cpu(const Tensor& gu, const Tensor& out);
void swiglu_forward_cuda(const Tensor& gu, const Tensor& out);
void swiglu_backward_cpu(const Tensor& dout, const Tensor& gu, const Tensor& dgu);
void swiglu_backward_cuda(const Tensor& dout, const Tensor& gu, const Tensor& dgu);
}  // namespace detail

}  // namespace fg::ops
