#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// x (B, T, nh, hd); positions i32 (T) or (B, T)
Variable rope(const Variable& x, const Tensor& positions, int64_t rotary_dim, double theta);
}  // namespace fg::ag
