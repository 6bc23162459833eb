#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// weight (V, D); ids i32 (any shape) -> ids.shape + (D)
Variable embedding(const Variable& weight, const Tensor& ids);
}  // namespace fg::ag
