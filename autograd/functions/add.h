#pragma once
#include "autograd/variable.h"

namespace fg::ag {
Variable add(const Variable& a, const Variable& b);
}  // namespace fg::ag
