#include "autograd/op_checks.h"

namespace fg::ag {

Variable random_leaf(const Shape& shape, uint64_t seed, double scale) {
  Generator gen(seed);
  return Variable(Tensor::uniform(shape, gen, -scale, scale, DType::F64), true);
}

std::vector<OpCheck> all_op_checks() {
  std::vector<OpCheck> all;
  for (auto* list : {embedding_checks, add_checks, linear_checks, rmsnorm_checks,
                     add_rmsnorm_checks, rope_checks, rmsnorm_qkv_rope_checks, attention_checks,
                     swiglu_checks, cross_entropy_checks, lm_head_loss_checks}) {
    for (OpCheck& c : list()) all.push_back(std::move(c));
  }
  return all;
}

}  // namespace fg::ag
