#include "autograd/functions/rope.h"

#include "autograd/op_checks.h"

namespace fg::ag {

namespace {
// positions = offset + arange(T), or (B, T) rows of distinct offsets when per_batch.
Tensor make_positions(int64_t B, int64_t T, int32_t offset, bool per_batch) {
  std::vector<int32_t> pos;
  for (int64_t b = 0; b < (per_batch ? B : 1); ++b)
    for (int64_t t = 0; t < T; ++t) pos.push_back(offset + static_cast<int32_t>(3 * b + t));
  return per_batch ? Tensor::from_ints(pos, {B, T}) : Tensor::from_ints(pos, {T});
}

OpCheck rope_case(const char* shapes, const Shape& x, int64_t rotary_dim, int32_t offset,
                  bool per_batch, double theta, uint64_t seed) {
  return {"rope", shapes, [=] {
            Tensor pos = make_positions(x[0], x[1], offset, per_batch);
            return gradcheck(
                [=](const std::vector<Variable>& in) {
                  return std::vector<Variable>{rope(in[0], pos, rotary_dim, theta)};
                },
                {random_leaf(x, seed)});
          }};
}
}  // namespace

std::vector<OpCheck> rope_checks() {
  return {
      rope_case("x (2, 5, 3, 10), rotary 6, pos 7 + t", {2, 5, 3, 10}, 6, 7, false, 1e4, 61),
      rope_case("x (3, 7, 1, 6), full rotary, pos (B, T)", {3, 7, 1, 6}, 6, 0, true, 1e4, 62),
      rope_case("x (2, 3, 5, 14), rot 2, pos 100+t, theta 500", {2, 3, 5, 14}, 2, 100, false, 500.0,
                63),
  };
}

}  // namespace fg::ag
