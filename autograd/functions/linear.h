#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// x (..., in), weight (out, in), bias (out) or an undefined Variable
Variable linear(const Variable& x, const Variable& weight, const Variable& bias = Variable());
// linear's node for a y = x @ weight^T + bias computed elsewhere (by a fused
// forward that produced more than y): the same backward.
Variable record_linear(const Variable& x, const Variable& weight, const Variable& bias, Tensor y);
}  // namespace fg::ag
