#include "autograd/functions/rmsnorm.h"

#include "autograd/function.h"
#include "ops/rmsnorm/rmsnorm.h"

namespace fg::ag {

Variable rmsnorm(const Variable& x, const Variable& weight, double eps) {
  ops::RMSNormOut out = ops::rmsnorm_forward(x.data(), weight.data(), eps);
  // Backward needs x, the weight and the per-row rstd; y is recomputed from them.
  return record("rmsnorm", {x, weight}, {out.y},
                [x = x.data(), w = weight.data(), rstd = out.rstd](const std::vector<Tensor>& g) {
                  ops::RMSNormGrads d = ops::rmsnorm_backward(g[0], x, w, rstd);
                  return std::vector<Tensor>{d.dx, d.dweight};
                })[0];
}

}  // namespace fg::ag
