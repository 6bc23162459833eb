#include "autograd/functions/lm_head_loss.h"

#include "autograd/op_checks.h"

namespace fg::ag {

namespace {
OpCheck lm_head_case(const std::string& shapes, int64_t n, int64_t d, int64_t v, int64_t chunk,
                     std::vector<int32_t> targets) {
  return {"lm_head_loss", shapes, [=] {
            Tensor t = Tensor::from_ints(targets, {n});
            return gradcheck(
                [t, chunk](const std::vector<Variable>& in) {
                  return std::vector<Variable>{lm_head_loss(in[0], in[1], t, chunk)};
                },
                {random_leaf({n, d}, 61), random_leaf({v, d}, 62)});
          }};
}
}  // namespace

std::vector<OpCheck> lm_head_loss_checks() {
  return {lm_head_case("y (7, 5), weight (11, 5), chunks of 3, 2 ignored", 7, 5, 11, 3,
                       {0, 10, -1, 4, 4, -1, 7}),
          lm_head_case("y (13, 3), weight (5, 3), one chunk", 13, 3, 5, 0,
                       {0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2}),
          lm_head_case("y (8, 4), weight (6, 4), chunks of 3, one ignored", 8, 4, 6, 3,
                       {5, 0, 3, -1, -1, -1, 2, 1}),
          lm_head_case("y (5, 3), weight (4, 3), chunks of 2, all ignored", 5, 3, 4, 2,
                       {-1, -1, -1, -1, -1})};
}

}  // namespace fg::ag
