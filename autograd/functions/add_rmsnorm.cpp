#include "autograd/functions/add_rmsnorm.h"

#include "autograd/function.h"
#include "ops/add_rmsnorm/add_rmsnorm.h"

namespace fg::ag {

AddRMSNormResult add_rmsnorm(const Variable& x, const Variable& residual, const Variable& weight,
                             double eps) {
  ops::AddRMSNormOut out = ops::add_rmsnorm_forward(
      x.data(), residual.defined() ? residual.data() : Tensor(), weight.data(), eps);
  // Backward keeps h (an output anyway) and rstd; dx is also the residual's gradient.
  std::vector<Variable> r =
      record("add_rmsnorm", {x, residual, weight}, {out.y, out.h},
             [h = out.h, w = weight.data(), rstd = out.rstd,
              has_residual = residual.defined()](const std::vector<Tensor>& g) {
               ops::AddRMSNormGrads d = ops::add_rmsnorm_backward(g[0], g[1], h, w, rstd);
               return std::vector<Tensor>{d.dx, has_residual ? d.dx : Tensor(), d.dweight};
             });
  return {r[0], r[1]};
}

}  // namespace fg::ag
