#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// x (..., D), weight (D); keeps x and rstd for backward
Variable rmsnorm(const Variable& x, const Variable& weight, double eps);
}  // namespace fg::ag
