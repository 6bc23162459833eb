#pragma once
#include "autograd/function.h"
#include "autograd/variable.h"

namespace fg::ag {
// x (..., D), weight (D); keeps x and rstd for backward
Variable rmsnorm(const Variable& x, const Variable& weight, double eps);

namespace detail {
// The norms' weights (rmsnorm, add_rmsnorm, the fused QKV layer): a weight cast from a
// parameter (master = cast_source(weight)) records the parameter as the input, and the
// norm's backward writes the weight gradient's fp32 sums into the parameter's buffer
// (ops::rmsnorm_backward's dweight_into) instead of rounding them to the weight's dtype.
const Variable& norm_weight_input(const Variable& master, const Variable& weight);
GradBuffer norm_weight_buffer(const Variable& master, const Tensor& x);
}  // namespace detail
}  // namespace fg::ag
