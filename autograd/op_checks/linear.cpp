#include "autograd/functions/linear.h"

#include "autograd/op_checks.h"

namespace fg::ag {

namespace {
// With `residual`, a last input of the output's shape is added by the product.
OpCheck linear_case(const char* shapes, const Shape& x, int64_t out, bool bias, uint64_t seed,
                    bool residual = false) {
  return {
      "linear", shapes, [=] {
        std::vector<Variable> in = {random_leaf(x, seed), random_leaf({out, x.back()}, seed + 1)};
        if (bias) in.push_back(random_leaf({out}, seed + 2));
        Shape y = x;
        y.back() = out;
        if (residual) in.push_back(random_leaf(y, seed + 3));
        return gradcheck(
            [bias, residual](const std::vector<Variable>& v) {
              return std::vector<Variable>{
                  linear(v[0], v[1], bias ? v[2] : Variable(), residual ? v.back() : Variable())};
            },
            in);
      }};
}
}  // namespace

std::vector<OpCheck> linear_checks() {
  return {
      linear_case("x (3, 5, 7), weight (11, 7), bias (11,)", {3, 5, 7}, 11, true, 21),
      linear_case("x (3, 5, 7), weight (11, 7), no bias", {3, 5, 7}, 11, false, 24),
      linear_case("x (13, 9), weight (5, 9), bias (5,)", {13, 9}, 5, true, 27),
      linear_case("x (2, 3, 5, 3), weight (7, 3), no bias", {2, 3, 5, 3}, 7, false, 30),
      linear_case("x (3, 5, 7), weight (11, 7), residual (3, 5, 11)", {3, 5, 7}, 11, false, 33,
                  true),
      linear_case("x (13, 9), weight (5, 9), bias (5,), residual (13, 5)", {13, 9}, 5, true, 37,
                  true),
  };
}

}  // namespace fg::ag
