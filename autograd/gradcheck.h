// Finite-difference gradient checking. The outputs of fn are projected onto
// fixed random weights to give a scalar L; every element of every input that
// requires grad is perturbed by +-eps and (L+ - L-) / 2 eps is compared with the
// analytic gradient from backward(): |analytic - numeric| <= atol + rtol |numeric|.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/variable.h"

namespace fg::ag {

struct GradCheckOptions {
  double eps = 1e-6;   // PyTorch's gradcheck defaults
  double atol = 1e-5;
  double rtol = 1e-3;
  uint64_t seed = 1234;  // for the projection weights
};

struct GradCheckResult {
  double max_abs_error = 0;  // max |analytic - numeric|
  double max_rel_error = 0;  // max |analytic - numeric| / max(|numeric|, atol)
  int64_t checked = 0;       // number of input elements checked
  bool passed = false;
  std::string worst;  // where the worst element was, e.g. "input 2, element 17"
};

using MultiFn = std::function<std::vector<Variable>(const std::vector<Variable>&)>;

// inputs: the values fn takes, f64 recommended; those with requires_grad are checked.
GradCheckResult gradcheck(const MultiFn& fn, const std::vector<Variable>& inputs,
                          const GradCheckOptions& options = {});

}  // namespace fg::ag
