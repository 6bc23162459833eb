// RMSNorm: the public entries (checks, device dispatch) and the CPU reference of the
// row kernels that rmsnorm, add_rmsnorm and rmsnorm_qkv_rope share. The reference
// accumulates in double whatever the dtype.
#include <cmath>
#include <string>
#include <vector>

#include "ops/add/add.h"
#include "ops/rmsnorm/rmsnorm.h"

namespace fg::ops {

namespace detail {

DType rmsnorm_stat_dtype(DType dtype) {
  return dtype == DType::F64 ? DType::F64 : DType::F32;
}

void check_like(const char* op, const char* name, const Tensor& t, const char* ref_name,
                const Tensor& ref) {
  check_defined(op, name, t);
  FG_CHECK(t.shape() == ref.shape(), op, ": ", name, " is ", t.shape_str(), " but ", ref_name,
           " is ", ref.shape_str());
  FG_CHECK(t.dtype() == ref.dtype(), op, ": ", name, " is ", dtype_name(t.dtype()), " but ",
           ref_name, " is ", dtype_name(ref.dtype()));
  check_same_device(op, name, t, ref_name, ref);
}

void check_rmsnorm_operands(const char* op, const char* x_name, const Tensor& x,
                            const Tensor& weight) {
  check_defined(op, x_name, x);
  check_defined(op, "weight", weight);
  FG_CHECK(x.dim() >= 1 && x.size(-1) > 0, op, ": ", x_name, " is ", x.shape_str(),
           " but needs a non-empty last dimension to normalize over");
  FG_CHECK(x.dtype() != DType::I32, op, ": ", x_name, " is i32 but must be a float tensor");
  check_shape(op, "weight", weight, {x.size(-1)});
  check_dtype(op, "weight", weight, x.dtype());
  check_same_device(op, "weight", weight, x_name, x);
}

void check_rstd(const char* op, const Tensor& rstd, const char* x_name, const Tensor& x) {
  check_shape(op, "rstd", rstd, {x.numel() / x.size(-1)});
  check_dtype(op, "rstd", rstd, rmsnorm_stat_dtype(x.dtype()));
  check_same_device(op, "rstd", rstd, x_name, x);
}

void rmsnorm_rows_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps,
                          const Tensor& h, const Tensor& y, const Tensor& rstd) {
#ifdef FG_CUDA
  if (x.is_cuda()) return rmsnorm_rows_forward_cuda(x, residual, weight, eps, h, y, rstd);
#endif
  rmsnorm_rows_forward_cpu(x, residual, weight, eps, h, y, rstd);
}

void rmsnorm_rows_apply(const Tensor& x, const Tensor& weight, const Tensor& rstd,
                        const Tensor& y) {
#ifdef FG_CUDA
  if (x.is_cuda()) return rmsnorm_rows_apply_cuda(x, weight, rstd, y);
#endif
  rmsnorm_rows_apply_cpu(x, weight, rstd, y);
}

void rmsnorm_rows_backward(const Tensor& dy, const Tensor& dh, const Tensor& x,
                           const Tensor& weight, const Tensor& rstd, const Tensor& dx,
                           const Tensor& dweight, const Tensor& y, bool dweight_add) {
#ifdef FG_CUDA
  if (x.is_cuda())
    return rmsnorm_rows_backward_cuda(dy, dh, x, weight, rstd, dx, dweight, y, dweight_add);
#endif
  rmsnorm_rows_backward_cpu(dy, dh, x, weight, rstd, dx, dweight, y, dweight_add);
}

namespace {

// Forward and apply share one loop: with `have_rstd` the statistics are read, not made.
template <class T>
void forward_rows(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps,
                  const Tensor& h, const Tensor& y, const Tensor& rstd, bool have_rstd) {
  const int64_t D = weight.numel(), rows = x.numel() / D;
  const T* px = x.data<T>();
  const T* pres = residual.defined() ? residual.data<T>() : nullptr;
  const T* pw = weight.data<T>();
  T* ph = residual.defined() ? h.data<T>() : nullptr;
  T* py = y.data<T>();
  T* pr = rstd.data<T>();  // the stat dtype is T for f32 and f64
  for (int64_t row = 0; row < rows; ++row) {
    const T* hr = px + row * D;  // (D): the row's h
    if (pres) {                  // h is stored in T and normalized as stored
      T* hw = ph + row * D;
      for (int64_t c = 0; c < D; ++c) hw[c] = hr[c] + pres[row * D + c];
      hr = hw;
    }
    if (!have_rstd) {
      double ss = 0;
      for (int64_t c = 0; c < D; ++c) ss += static_cast<double>(hr[c]) * hr[c];
      pr[row] = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(D) + eps));
    }
    const T r = pr[row];
    T* yr = py + row * D;
    for (int64_t c = 0; c < D; ++c) yr[c] = hr[c] * r * pw[c];
  }
}

}  // namespace

void rmsnorm_rows_forward_cpu(const Tensor& x, const Tensor& residual, const Tensor& weight,
                              double eps, const Tensor& h, const Tensor& y, const Tensor& rstd) {
  dispatch_float("rmsnorm", x.dtype(),
                 [&]<class T>() { forward_rows<T>(x, residual, weight, eps, h, y, rstd, false); });
}

void rmsnorm_rows_apply_cpu(const Tensor& x, const Tensor& weight, const Tensor& rstd,
                            const Tensor& y) {
  dispatch_float("rmsnorm", x.dtype(), [&]<class T>() {
    forward_rows<T>(x, Tensor(), weight, 0.0, Tensor(), y, rstd, true);
  });
}

void rmsnorm_rows_backward_cpu(const Tensor& dy, const Tensor& dh, const Tensor& x,
                               const Tensor& weight, const Tensor& rstd, const Tensor& dx,
                               const Tensor& dweight, const Tensor& y, bool dweight_add) {
  dispatch_float("rmsnorm_backward", x.dtype(), [&]<class T>() {
    const int64_t D = weight.numel(), rows = x.numel() / D;
    const T* pdy = dy.data<T>();
    const T* pdh = dh.defined() ? dh.data<T>() : nullptr;
    const T* px = x.data<T>();
    const T* pw = weight.data<T>();
    const T* pr = rstd.data<T>();
    T* pdx = dx.data<T>();
    T* py = y.defined() ? y.data<T>() : nullptr;
    std::vector<double> dw(D, 0.0);  // (D) accumulated over rows
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t base = row * D;
      const double r = pr[row];
      double dot = 0;  // sum over the row of g * xhat
      for (int64_t c = 0; c < D; ++c)
        dot += static_cast<double>(pw[c]) * pdy[base + c] * (px[base + c] * r);
      const double mean = dot / static_cast<double>(D);
      for (int64_t c = 0; c < D; ++c) {
        const double xhat = px[base + c] * r, g = static_cast<double>(pw[c]) * pdy[base + c];
        const double v = r * (g - xhat * mean) + (pdh ? static_cast<double>(pdh[base + c]) : 0.0);
        pdx[base + c] = static_cast<T>(v);
        if (py) py[base + c] = px[base + c] * pr[row] * pw[c];  // in T, as forward does
        dw[c] += pdy[base + c] * xhat;
      }
    }
    // In dweight's dtype (weight's or wider), rounded once.
    const Tensor sums = Tensor::from_vector(dw, {D}, DType::F64);
    if (dweight_add)
      dweight.copy_(add_forward(dweight.to(DType::F64), sums));
    else
      dweight.copy_(sums);
  });
}

Tensor dweight_buffer(const char* op, const Tensor& dweight_into, const Tensor& x,
                      const Tensor& weight) {
  if (!dweight_into.defined()) return Tensor::empty(weight.shape(), x.dtype(), x.device());
  check_shape(op, "dweight_into", dweight_into, weight.shape());
  check_same_device(op, "dweight_into", dweight_into, "weight", weight);
  FG_CHECK(dweight_into.is_contiguous(), op, ": dweight_into ", dweight_into.describe(),
           " is not contiguous");
  const DType stat = rmsnorm_stat_dtype(x.dtype());
  FG_CHECK(dweight_into.dtype() == weight.dtype() || dweight_into.dtype() == stat, op,
           ": dweight_into is ", dtype_name(dweight_into.dtype()), " but must be ",
           dtype_name(weight.dtype()),
           weight.dtype() == stat ? std::string() : str_cat(" or ", dtype_name(stat)));
  return dweight_into;
}

RMSNormGrads rmsnorm_backward_checked(const char* op, const Tensor& dy, const Tensor& dh,
                                      const char* x_name, const Tensor& x, const Tensor& weight,
                                      const Tensor& rstd, const Tensor& dweight_into,
                                      bool dweight_add) {
  check_rmsnorm_operands(op, x_name, x, weight);
  check_like(op, "dy", dy, x_name, x);
  if (dh.defined()) check_like(op, "dh", dh, x_name, x);
  check_rstd(op, rstd, x_name, x);
  RMSNormGrads grads{Tensor::empty(x.shape(), x.dtype(), x.device()),
                     dweight_buffer(op, dweight_into, x, weight)};
  rmsnorm_rows_backward(dy.contiguous(), dh.defined() ? dh.contiguous() : Tensor(), x.contiguous(),
                        weight.contiguous(), rstd.contiguous(), grads.dx, grads.dweight, Tensor(),
                        dweight_into.defined() && dweight_add);
  return grads;
}

}  // namespace detail

RMSNormOut rmsnorm_forward(const Tensor& x, const Tensor& weight, double eps) {
  detail::check_rmsnorm_operands("rmsnorm", "x", x, weight);
  FG_CHECK(eps >= 0, "rmsnorm: eps is ", eps, " but must be >= 0");
  RMSNormOut out{
      Tensor::empty(x.shape(), x.dtype(), x.device()),
      Tensor::empty({x.numel() / x.size(-1)}, detail::rmsnorm_stat_dtype(x.dtype()), x.device())};
  detail::rmsnorm_rows_forward(x.contiguous(), Tensor(), weight.contiguous(), eps, Tensor(), out.y,
                               out.rstd);
  return out;
}

RMSNormGrads rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                              const Tensor& rstd, const Tensor& dweight_into, bool dweight_add) {
  return detail::rmsnorm_backward_checked("rmsnorm_backward", dy, Tensor(), "x", x, weight, rstd,
                                          dweight_into, dweight_add);
}

}  // namespace fg::ops
