// The finite-difference checks of every differentiable op, shared by
// `gradcheck --ops` and the GoogleTest suite. One file per op in op_checks/.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/gradcheck.h"

namespace fg::ag {

struct OpCheck {
  std::string op;      // "rope"
  std::string shapes;  // "x (2, 5, 3, 10), rotary 6, offset 7"
  std::function<GradCheckResult()> run;
};

std::vector<OpCheck> embedding_checks();
std::vector<OpCheck> add_checks();
std::vector<OpCheck> linear_checks();
std::vector<OpCheck> rmsnorm_checks();
std::vector<OpCheck> add_rmsnorm_checks();
std::vector<OpCheck> rope_checks();
std::vector<OpCheck> rmsnorm_qkv_rope_checks();
std::vector<OpCheck> attention_checks();
std::vector<OpCheck> swiglu_checks();
std::vector<OpCheck> cross_entropy_checks();
std::vector<OpCheck> lm_head_loss_checks();

std::vector<OpCheck> all_op_checks();

// Helper for the check files: a random f64 leaf with requires_grad on.
Variable random_leaf(const Shape& shape, uint64_t seed, double scale = 1.0);

}  // namespace fg::ag
