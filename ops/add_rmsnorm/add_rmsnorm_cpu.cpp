// Residual add + RMSNorm: the public entries. The work is rmsnorm's row kernels
// (ops/rmsnorm), which take the residual in the same pass on both devices.
#include "ops/add_rmsnorm/add_rmsnorm.h"
#include "ops/rmsnorm/rmsnorm.h"

namespace fg::ops {

AddRMSNormOut add_rmsnorm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight,
                                  double eps) {
  detail::check_rmsnorm_operands("add_rmsnorm", "x", x, weight);
  if (residual.defined()) detail::check_like("add_rmsnorm", "residual", residual, "x", x);
  FG_CHECK(eps >= 0, "add_rmsnorm: eps is ", eps, " but must be >= 0");
  const Tensor xc = x.contiguous();
  AddRMSNormOut out{
      Tensor::empty(x.shape(), x.dtype(), x.device()),
      residual.defined() ? Tensor::empty(x.shape(), x.dtype(), x.device()) : xc,
      Tensor::empty({x.numel() / x.size(-1)}, detail::rmsnorm_stat_dtype(x.dtype()), x.device())};
  detail::rmsnorm_rows_forward(xc, residual.defined() ? residual.contiguous() : Tensor(),
                               weight.contiguous(), eps, residual.defined() ? out.h : Tensor(),
                               out.y, out.rstd);
  return out;
}

AddRMSNormGrads add_rmsnorm_backward(const Tensor& dy, const Tensor& dh, const Tensor& h,
                                     const Tensor& weight, const Tensor& rstd,
                                     const Tensor& dweight_into, bool dweight_add) {
  RMSNormGrads g = detail::rmsnorm_backward_checked("add_rmsnorm_backward", dy, dh, "h", h, weight,
                                                    rstd, dweight_into, dweight_add);
  return {g.dx, g.dweight};
}

}  // namespace fg::ops
