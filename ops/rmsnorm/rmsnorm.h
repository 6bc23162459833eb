// y = x / sqrt(mean(x^2) + eps) * weight over the last dimension; statistics in
// fp32 (f64 for f64 inputs).
#pragma once

#include "core/tensor.h"

namespace fg::ops {

struct RMSNormOut {
  Tensor y;     // like x
  Tensor rstd;  // (rows) = 1 / sqrt(mean(x^2) + eps); f32, or f64 for f64 inputs
};
// x (..., D), weight (D)
RMSNormOut rmsnorm_forward(const Tensor& x, const Tensor& weight, double eps);

struct RMSNormGrads {
  Tensor dx;       // like x
  Tensor dweight;  // (D), weight's dtype, or dweight_into's
};
// dweight_into (optional, (D), contiguous, weight's dtype or rmsnorm_stat_dtype(x): a bf16
// weight's f32 master gradient takes the fp32 sums unrounded): dweight is written there, or
// added to what it holds with dweight_add, and returned as g.dweight.
RMSNormGrads rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                              const Tensor& rstd, const Tensor& dweight_into = Tensor(),
                              bool dweight_add = false);

namespace detail {
// The row kernels behind rmsnorm, add_rmsnorm and rmsnorm_qkv_rope. Operands are
// contiguous with D = weight.numel() > 0 and rows = x.numel() / D; the public
// entries check them. rstd has rmsnorm_stat_dtype(x.dtype()).

// h = x + residual; rstd = 1 / sqrt(mean(h^2) + eps); y = h * rstd * weight.
// Without a residual (undefined) h is x itself and is not written (pass it undefined).
void rmsnorm_rows_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps,
                          const Tensor& h, const Tensor& y, const Tensor& rstd);
// y = x * rstd * weight from a saved rstd: backward recomputing the normalized rows.
void rmsnorm_rows_apply(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& y);
// xhat = x * rstd, g = weight * dy: dx = rstd * (g - xhat * mean(g * xhat)) (+ dh when
// defined), dweight = the sum over rows of dy * xhat, in dweight's dtype (weight's, or
// rmsnorm_stat_dtype(x)), added to what it holds with dweight_add.
// With y defined, the pass also writes y = xhat * weight, the normalized rows again:
// the fused layer's dW needs them, and this pass reads x anyway.
void rmsnorm_rows_backward(const Tensor& dy, const Tensor& dh, const Tensor& x,
                           const Tensor& weight, const Tensor& rstd, const Tensor& dx,
                           const Tensor& dweight, const Tensor& y = Tensor(),
                           bool dweight_add = false);

void rmsnorm_rows_forward_cpu(const Tensor& x, const Tensor& residual, const Tensor& weight,
                              double eps, const Tensor& h, const Tensor& y, const Tensor& rstd);
void rmsnorm_rows_apply_cpu(const Tensor& x, const Tensor& weight, const Tensor& rstd,
                            const Tensor& y);
void rmsnorm_rows_backward_cpu(const Tensor& dy, const Tensor& dh, const Tensor& x,
                               const Tensor& weight, const Tensor& rstd, const Tensor& dx,
                               const Tensor& dweight, const Tensor& y, bool dweight_add);
void rmsnorm_rows_forward_cuda(const Tensor& x, const Tensor& residual, const Tensor& weight,
                               double eps, const Tensor& h, const Tensor& y, const Tensor& rstd);
void rmsnorm_rows_apply_cuda(const Tensor& x, const Tensor& weight, const Tensor& rstd,
                             const Tensor& y);
void rmsnorm_rows_backward_cuda(const Tensor& dy, const Tensor& dh, const Tensor& x,
                                const Tensor& weight, const Tensor& rstd, const Tensor& dx,
                                const Tensor& dweight, const Tensor& y, bool dweight_add);

// out (n) = the sum of the rows of partial (groups, n), added in row order (deterministic),
// or out += it with add: the finish of column sums that blocks accumulate over row ranges
// (rmsnorm's dweight, rope's column sums). partial is contiguous in
// rmsnorm_stat_dtype(out.dtype()).
void sum_partial_rows_cuda(const Tensor& partial, const Tensor& out, bool add = false);

// f64 for f64 inputs, else f32.
DType rmsnorm_stat_dtype(DType dtype);

// Argument checks shared by the norm ops; messages name the op and both sides.
// x (..., D) of a float dtype with D > 0, weight (D) of x's dtype and device.
void check_rmsnorm_operands(const char* op, const char* x_name, const Tensor& x,
                            const Tensor& weight);
// rstd (rows of x) in rmsnorm_stat_dtype on x's device.
void check_rstd(const char* op, const Tensor& rstd, const char* x_name, const Tensor& x);
// t has ref's shape, dtype and device.
void check_like(const char* op, const char* name, const Tensor& t, const char* ref_name,
                const Tensor& ref);

// rmsnorm_backward with an optional dh added to dx; add_rmsnorm_backward reuses it.
RMSNormGrads rmsnorm_backward_checked(const char* op, const Tensor& dy, const Tensor& dh,
                                      const char* x_name, const Tensor& x, const Tensor& weight,
                                      const Tensor& rstd, const Tensor& dweight_into,
                                      bool dweight_add);
// dweight_into checked as rmsnorm_backward takes it (see there); returns it, or a new (D)
// tensor of weight's dtype when it is undefined.
Tensor dweight_buffer(const char* op, const Tensor& dweight_into, const Tensor& x,
                      const Tensor& weight);
}  // namespace detail

}  // namespace fg::ops
