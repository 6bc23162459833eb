#include "autograd/functions/add_rmsnorm.h"

#include "autograd/op_checks.h"

namespace fg::ag {

namespace {
// Both outputs (y and h) are projected, so dx carries dh as well as the norm's gradient.
OpCheck add_rmsnorm_case(const char* shapes, const Shape& x, double eps, uint64_t seed) {
  return {
      "add_rmsnorm", shapes, [=] {
        return gradcheck(
            [eps](const std::vector<Variable>& in) {
              AddRMSNormResult r = add_rmsnorm(in[0], in[1], in[2], eps);
              return std::vector<Variable>{r.y, r.h};
            },
            {random_leaf(x, seed), random_leaf(x, seed + 1), random_leaf({x.back()}, seed + 2)});
      }};
}
// Without a residual: h passes x through, and its projected gradient must reach dx.
OpCheck rmsnorm_pass_through_case(const char* shapes, const Shape& x, uint64_t seed) {
  return {"add_rmsnorm", shapes, [=] {
            return gradcheck(
                [](const std::vector<Variable>& in) {
                  AddRMSNormResult r = add_rmsnorm(in[0], Variable(), in[1], 1e-5);
                  return std::vector<Variable>{r.y, r.h};
                },
                {random_leaf(x, seed), random_leaf({x.back()}, seed + 1)});
          }};
}
}  // namespace

std::vector<OpCheck> add_rmsnorm_checks() {
  return {
      add_rmsnorm_case("x, residual (3, 5, 7), weight (7,)", {3, 5, 7}, 1e-5, 51),
      add_rmsnorm_case("x, residual (9, 11), weight (11,), eps 0.1", {9, 11}, 0.1, 54),
      rmsnorm_pass_through_case("x (3, 5, 7), no residual, weight (7,)", {3, 5, 7}, 57),
  };
}

}  // namespace fg::ag
