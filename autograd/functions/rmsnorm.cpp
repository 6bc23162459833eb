#include "autograd/functions/rmsnorm.h"

#include "autograd/function.h"
#include "ops/rmsnorm/rmsnorm.h"

namespace fg::ag {

namespace detail {
const Variable& norm_weight_input(const Variable& master, const Variable& weight) {
  return master.defined() ? master : weight;
}
GradBuffer norm_weight_buffer(const Variable& master, const Tensor& x) {
  return leaf_grad_buffer(master, [&](DType c) {
    return c == x.dtype() || c == ops::detail::rmsnorm_stat_dtype(x.dtype());
  });
}
}  // namespace detail

Variable rmsnorm(const Variable& x, const Variable& weight, double eps) {
  ops::RMSNormOut out = ops::rmsnorm_forward(x.data(), weight.data(), eps);
  // Backward needs x, the weight and the per-row rstd; y is recomputed from them. A weight
  // cast from a parameter takes its gradient in the parameter's buffer (norm_weight_input).
  const Variable master = cast_source(weight);
  return record(
      "rmsnorm", {x, detail::norm_weight_input(master, weight)}, {out.y},
      [x = x.data(), w = weight.data(), rstd = out.rstd, master](const std::vector<Tensor>& g) {
        const GradBuffer into = detail::norm_weight_buffer(master, x);
        ops::RMSNormGrads d = ops::rmsnorm_backward(g[0], x, w, rstd, into.buffer, into.add);
        return std::vector<Tensor>{d.dx, d.dweight};
      })[0];
}

}  // namespace fg::ag
