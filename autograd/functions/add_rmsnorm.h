#pragma once
#include "autograd/variable.h"

namespace fg::ag {
struct AddRMSNormResult {
  Variable y;  // rmsnorm(x + residual) * weight
  Variable h;  // x + residual, or x's own data without a residual
};
// Keeps h and rstd for backward. residual may be undefined: y = rmsnorm(x) * weight and
// h passes x through, its gradient added to x's in the norm's backward pass (no add of
// its own where the stream's next product also reads it).
AddRMSNormResult add_rmsnorm(const Variable& x, const Variable& residual, const Variable& weight,
                             double eps);
}  // namespace fg::ag
