#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// x converted to dtype (mixed precision: fp32 master weights -> bf16 compute);
// backward converts the gradient back to x's dtype. Into a leaf (a parameter)
// the gradient goes unconverted: the leaf converts it as it lands in its
// buffer, one pass instead of two.
Variable cast(const Variable& x, DType dtype);
// The same with x's value already converted at hand (a copy the caller keeps
// equal to x cast to its dtype, e.g. one the optimizer writes with each update):
// no conversion pass, the copy itself is the output.
Variable cast(const Variable& x, const Tensor& converted);
}  // namespace fg::ag
