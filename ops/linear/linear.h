// y = x @ weight^T + bias, weights stored [out, in] as in PyTorch.
#pragma once

#include "core/tensor.h"

namespace fg::ops {

// x (..., in), weight (out, in), bias (out) or undefined -> y (..., out)
Tensor linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias);

struct LinearGrads {
  Tensor dx;       // (..., in)
  Tensor dweight;  // (out, in)
  Tensor dbias;    // (out), undefined when has_bias is false
};
LinearGrads linear_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, bool has_bias);

namespace detail {
// Column sums of a contiguous dy (rows, out) into db (out): the bias gradient.
void column_sum_cpu(const Tensor& dy, const Tensor& db);
void column_sum_cuda(const Tensor& dy, const Tensor& db);
}  // namespace detail

}  // namespace fg::ops
