#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// logits (N, V); targets i32 (N), -1 ignored -> mean loss, shape ()
Variable cross_entropy(const Variable& logits, const Tensor& targets);
}  // namespace fg::ag
