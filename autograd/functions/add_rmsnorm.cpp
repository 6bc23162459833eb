#include "autograd/functions/add_rmsnorm.h"

#include "autograd/function.h"
#include "autograd/functions/rmsnorm.h"
#include "ops/add_rmsnorm/add_rmsnorm.h"

namespace fg::ag {

AddRMSNormResult add_rmsnorm(const Variable& x, const Variable& residual, const Variable& weight,
                             double eps) {
  ops::AddRMSNormOut out = ops::add_rmsnorm_forward(
      x.data(), residual.defined() ? residual.data() : Tensor(), weight.data(), eps);
  // Backward keeps h (an output anyway) and rstd; dx is also the residual's gradient.
  const Variable master = cast_source(weight);  // see detail::norm_weight_input
  std::vector<Variable> r = record(
      "add_rmsnorm", {x, residual, detail::norm_weight_input(master, weight)}, {out.y, out.h},
      [h = out.h, w = weight.data(), rstd = out.rstd, has_residual = residual.defined(),
       master](const std::vector<Tensor>& g) {
        const GradBuffer into = detail::norm_weight_buffer(master, h);
        ops::AddRMSNormGrads d =
            ops::add_rmsnorm_backward(g[0], g[1], h, w, rstd, into.buffer, into.add);
        return std::vector<Tensor>{d.dx, has_residual ? d.dx : Tensor(), d.dweight};
      });
  return {r[0], r[1]};
}

}  // namespace fg::ag
