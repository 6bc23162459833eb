#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// x converted to dtype (mixed precision: fp32 master weights -> bf16 compute);
// backward converts the gradient back to x's dtype.
Variable cast(const Variable& x, DType dtype);
}  // namespace fg::ag
