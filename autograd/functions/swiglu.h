#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// gu (..., 2F) = [gate | up] -> silu(gate) * up (..., F)
Variable swiglu(const Variable& gu);
}  // namespace fg::ag
