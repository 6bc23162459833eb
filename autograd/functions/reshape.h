#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// A view with a new shape (a copy when not contiguous); backward reshapes back.
Variable reshape(const Variable& x, const Shape& shape);
}  // namespace fg::ag
