#include "autograd/functions/cross_entropy.h"

#include "autograd/op_checks.h"
#include "ops/cross_entropy/cross_entropy.h"

namespace fg::ag {

namespace {
constexpr int32_t kIgnore = ops::kIgnoreIndex;

OpCheck cross_entropy_case(const char* shapes, Variable logits, std::vector<int32_t> targets) {
  return {"cross_entropy", shapes, [=] {
            Tensor t = Tensor::from_ints(targets, {logits.size(0)});
            return gradcheck(
                [t](const std::vector<Variable>& in) {
                  return std::vector<Variable>{cross_entropy(in[0], t)};
                },
                {logits});
          }};
}

// Logits far from zero: only a max-subtracted log-sum-exp survives them.
Variable offset_leaf(const Shape& shape, uint64_t seed, double offset) {
  Generator gen(seed);
  return Variable(Tensor::uniform(shape, gen, offset - 2, offset + 2, DType::F64), true);
}
}  // namespace

std::vector<OpCheck> cross_entropy_checks() {
  return {
      cross_entropy_case("logits (7, 11), 2 rows ignored", random_leaf({7, 11}, 51, 2.0),
                         {3, kIgnore, 10, 0, 5, kIgnore, 3}),
      cross_entropy_case("logits (13, 5), none ignored, values in [-4, 4]",
                         random_leaf({13, 5}, 52, 4.0), {0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 2, 2, 1}),
      cross_entropy_case("logits (5, 13), all ignored", random_leaf({5, 13}, 53),
                         {kIgnore, kIgnore, kIgnore, kIgnore, kIgnore}),
      cross_entropy_case("logits (3, 7) near 1000, 1 row ignored", offset_leaf({3, 7}, 54, 1000.0),
                         {6, kIgnore, 0}),
  };
}

}  // namespace fg::ag
