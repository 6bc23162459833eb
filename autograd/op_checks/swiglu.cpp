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
OpCheck swiglu_mlp_case(const char* shapes, const Shape& x, int64_t f, uint64_t seed) {
  const int64_t d = x.back();
  return {"swiglu_mlp", shapes, [=] {
            return gradcheck(
                [](const std::vector<Variable>& in) {
                  return std::vector<Variable>{swiglu_mlp(in[0], in[1], in[2])};
                },
                {random_leaf(x, seed, 2.0), random_leaf({2 * f, d}, seed + 1),
                 random_leaf({d, f}, seed + 2)});
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
  };
}

}  // namespace fg::ag
