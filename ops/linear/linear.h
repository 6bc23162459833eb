// y = x @ weight^T + bias, weights stored [out, in] as in PyTorch.
#pragma once

#include "core/tensor.h"

namespace fg::ops {

// x (..., in), weight (out, in), bias (out) or undefined -> y (..., out).
// residual (y's shape and dtype) or undefined: y = x @ weight^T + bias + residual, the
// residual added in the product's epilogue (a block's output projection adding its
// branch to the residual stream without a pass of its own).
Tensor linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                      const Tensor& residual = Tensor());

struct LinearGrads {
  Tensor dx;       // (..., in)
  Tensor dweight;  // (out, in)
  Tensor dbias;    // (out), undefined when has_bias is false
};
// dweight_into (optional, weight's shape, contiguous, a dtype gemm_accepts for
// c): dweight is written there, or added to what it holds with dweight_add, and
// returned as g.dweight; a mixed-precision weight's f32 master gradient takes
// the GEMM's fp32 sums without a bf16 gradient and a conversion pass between.
LinearGrads linear_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, bool has_bias,
                            const Tensor& dweight_into = Tensor(), bool dweight_add = false);

// linear_backward's dweight alone: dy (..., out), x (..., in) -> dy^T @ x (out, in), into
// dweight_into as there.
Tensor linear_weight_grad(const Tensor& dy, const Tensor& x, const Tensor& weight,
                          const Tensor& dweight_into = Tensor(), bool dweight_add = false);

// Column sums of a contiguous (rows, cols) tensor: (cols), its dtype, summed in f32 (f64
// for f64). The bias gradient of a product's output.
Tensor column_sums(const Tensor& x);

namespace detail {
// Column sums of a contiguous dy (rows, out) into db (out): the bias gradient.
void column_sum_cpu(const Tensor& dy, const Tensor& db);
void column_sum_cuda(const Tensor& dy, const Tensor& db);
}  // namespace detail

}  // namespace fg::ops
