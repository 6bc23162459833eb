#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// x (..., in), weight (out, in), bias (out) or an undefined Variable; residual (..., out)
// or undefined: y = x @ weight^T + bias + residual, the residual added by the product
// (ops::linear_forward), its gradient dy itself.
Variable linear(const Variable& x, const Variable& weight, const Variable& bias = Variable(),
                const Variable& residual = Variable());
// linear's node for a y = x @ weight^T + bias (+ residual) computed elsewhere (by a
// fused forward that produced more than y): the same backward.
Variable record_linear(const Variable& x, const Variable& weight, const Variable& bias, Tensor y,
                       const Variable& residual = Variable());
}  // namespace fg::ag
