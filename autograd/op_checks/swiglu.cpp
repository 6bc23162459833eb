#include "autograd/functions/swiglu.h"

#include "autograd/op_checks.h"

namespace fg::ag {

namespace {
OpCheck swiglu_case(const char* shapes, const Shape& gu, uint64_t seed, double scale) {
  return {
      "swiglu", shapes, [=] {
        return gradcheck(
            [](const std::vector<Variable>& in) { return std::vector<Variable>{swiglu(in[0])}; },
            {random_leaf(gu, seed, scale)});
      }};
}
// The MLP: x, w_gate_up and w_down all checked (swiglu_down's backward among them).
// With `residual`, a fourth input of x's shape is added by the down product.
OpCheck swiglu_mlp_case(const char* shapes, const Shape& x, int64_t f, uint64_t seed,
                        bool residual = false) {
  const int64_t d = x.back();
  return {"swiglu_mlp", shapes, [=] {
            std::vector<Variable> in = {random_leaf(x, seed, 2.0),
                                        random_leaf({2 * f, d}, seed + 1),
                                        random_leaf({d, f}, seed + 2)};
            if (residual) in.push_back(random_leaf(x, seed + 3));
            return gradcheck(
                [residual](const std::vector<Variable>& v) {
                  return std::vector<Variable>{
                      swiglu_mlp(v[0], v[1], v[2], residual ? v[3] : Variable())};
                },
                in);
          }};
}
}  // namespace

std::vector<OpCheck> swiglu_checks() {
  return {
      swiglu_case("gu (3, 5, 14), F 7", {3, 5, 14}, 41, 1.0),
      swiglu_case("gu (13, 22), F 11", {13, 22}, 42, 2.0),
      swiglu_case("gu (2, 3, 5, 6), F 3, values in [-6, 6]", {2, 3, 5, 6}, 43, 6.0),
      swiglu_mlp_case("x (2, 3, 6), F 5", {2, 3, 6}, 5, 44),
      swiglu_mlp_case("x (7, 4), F 9", {7, 4}, 9, 45),
      swiglu_mlp_case("x (2, 3, 6), F 5, residual (2, 3, 6)", {2, 3, 6}, 5, 46, true),
  };
}

}  // namespace fg::ag
