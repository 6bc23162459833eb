#pragma once
#include "autograd/variable.h"

namespace fg::ag {
struct AddRMSNormResult {
  Variable y;  // rmsnorm(x + residual) * weight
  Variable h;  // x + residual
};
// Keeps h and rstd for backward.
AddRMSNormResult add_rmsnorm(const Variable& x, const Variable& residual, const Variable& weight,
                             double eps);
}  // namespace fg::ag
