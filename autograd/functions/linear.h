#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// x (..., in), weight (out, in), bias (out) or an undefined Variable
Variable linear(const Variable& x, const Variable& weight, const Variable& bias = Variable());
}  // namespace fg::ag
