#include "autograd/functions/rmsnorm.h"

#include "autograd/op_checks.h"

namespace fg::ag {

namespace {
OpCheck rmsnorm_case(const char* shapes, const Shape& x, double eps, uint64_t seed) {
  return {"rmsnorm", shapes, [=] {
            return gradcheck(
                [eps](const std::vector<Variable>& in) {
                  return std::vector<Variable>{rmsnorm(in[0], in[1], eps)};
                },
                {random_leaf(x, seed), random_leaf({x.back()}, seed + 1)});
          }};
}
}  // namespace

std::vector<OpCheck> rmsnorm_checks() {
  return {
      rmsnorm_case("x (3, 5, 7), weight (7,)", {3, 5, 7}, 1e-5, 41),
      rmsnorm_case("x (11, 13), weight (13,), eps 0.1", {11, 13}, 0.1, 43),
      rmsnorm_case("x (2, 3, 1), weight (1,)", {2, 3, 1}, 1e-5, 45),
  };
}

}  // namespace fg::ag
