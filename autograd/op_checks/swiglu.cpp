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
}  // namespace

std::vector<OpCheck> swiglu_checks() {
  return {
      swiglu_case("gu (3, 5, 14), F 7", {3, 5, 14}, 41, 1.0),
      swiglu_case("gu (13, 22), F 11", {13, 22}, 42, 2.0),
      swiglu_case("gu (2, 3, 5, 6), F 3, values in [-6, 6]", {2, 3, 5, 6}, 43, 6.0),
  };
}

}  // namespace fg::ag
