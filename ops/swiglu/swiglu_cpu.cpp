// SwiGLU: the public entries (checks, device dispatch) and the CPU reference.
#include <cmath>

#include "ops/gemm/gemm.h"
#include "ops/linear/linear.h"
#include "ops/swiglu/swiglu.h"

namespace fg::ops {

namespace {
void check_gu(const char* op, const Tensor& gu) {
  check_defined(op, "gu", gu);
  FG_CHECK(gu.dim() >= 1 && gu.size(-1) % 2 == 0, op, ": gu is ", gu.shape_str(),
           " but its last dimension must be even ([gate | up])");
  FG_CHECK(gu.dtype() != DType::I32, op, ": gu must be a float tensor, got ", gu.describe());
}

// gu (..., 2F) -> (..., F)
Shape half_last(const Shape& shape) {
  Shape s = shape;
  s.back() /= 2;
  return s;
}

template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}
}  // namespace

GateUpSwiGLU gate_up_swiglu(const Tensor& x, const Tensor& w) {
  const char* op = "gate_up_swiglu";
  check_defined(op, "x", x);
  check_defined(op, "w", w);
  FG_CHECK(x.dim() >= 1 && w.dim() == 2 && w.size(1) == x.size(-1) && w.size(0) % 2 == 0, op,
           ": x is ", x.shape_str(), " but w is ", w.shape_str(), " (expected (2F, ",
           x.dim() >= 1 ? x.size(-1) : 0, "))");
#ifdef FG_CUDA
  if (x.is_cuda() && x.dtype() == w.dtype() && w.device() == x.device() && x.size(-1) > 0) {
    const Tensor x2 = x.contiguous().reshape({x.numel() / x.size(-1), x.size(-1)});
    const Tensor wc = w.contiguous();
    if (detail::gate_up_swiglu_cuda_takes(x2, wc)) {
      Shape gu_shape = x.shape(), out_shape = x.shape();
      gu_shape.back() = w.size(0);
      out_shape.back() = w.size(0) / 2;
      GateUpSwiGLU r{Tensor::empty(gu_shape, x.dtype(), x.device()),
                     Tensor::empty(out_shape, x.dtype(), x.device())};
      FG_CHECK(detail::gate_up_swiglu_cuda(x2, wc, r.gu, r.out),
               "gate_up_swiglu: the fused GEMM declined fresh outputs");
      return r;
    }
  }
#endif
  Tensor gu = linear_forward(x, w, Tensor());
  return {gu, swiglu_forward(gu)};
}

Tensor swiglu_forward(const Tensor& gu) {
  check_gu("swiglu", gu);
  Tensor out = Tensor::empty(half_last(gu.shape()), gu.dtype(), gu.device());
#ifdef FG_CUDA
  if (gu.is_cuda()) {
    detail::swiglu_forward_cuda(gu.contiguous(), out);
    return out;
  }
#endif
  detail::swiglu_forward_cpu(gu.contiguous(), out);
  return out;
}

Tensor swiglu_backward(const Tensor& dout, const Tensor& gu) {
  check_gu("swiglu_backward", gu);
  check_defined("swiglu_backward", "dout", dout);
  FG_CHECK(dout.shape() == half_last(gu.shape()), "swiglu_backward: dout is ", dout.shape_str(),
           " but gu is ", gu.shape_str(), " (expected dout (..., F) for gu (..., 2F))");
  FG_CHECK(dout.dtype() == gu.dtype(), "swiglu_backward: dout is ", dtype_name(dout.dtype()),
           " but gu is ", dtype_name(gu.dtype()));
  check_same_device("swiglu_backward", "dout", dout, "gu", gu);
  Tensor dgu = Tensor::empty(gu.shape(), gu.dtype(), gu.device());
#ifdef FG_CUDA
  if (gu.is_cuda()) {
    detail::swiglu_backward_cuda(dout.contiguous(), gu.contiguous(), dgu);
    return dgu;
  }
#endif
  detail::swiglu_backward_cpu(dout.contiguous(), gu.contiguous(), dgu);
  return dgu;
}

Tensor swiglu_down_backward(const Tensor& dy, const Tensor& w_down, const Tensor& gu) {
  const char* op = "swiglu_down_backward";
  check_gu(op, gu);
  check_defined(op, "dy", dy);
  check_defined(op, "w_down", w_down);
  const int64_t f = gu.size(-1) / 2;
  FG_CHECK(w_down.dim() == 2 && w_down.size(1) == f, op, ": w_down is ", w_down.shape_str(),
           " but gu is ", gu.shape_str(), " (expected (D, ", f, "))");
  Shape dy_shape = gu.shape();
  dy_shape.back() = w_down.size(0);
  FG_CHECK(dy.shape() == dy_shape, op, ": dy is ", dy.shape_str(), " but gu is ", gu.shape_str(),
           " and w_down ", w_down.shape_str(), " (expected dy ", shape_str(dy_shape), ")");
  FG_CHECK(dy.dtype() == gu.dtype() && w_down.dtype() == gu.dtype(), op, ": dy is ",
           dtype_name(dy.dtype()), ", w_down ", dtype_name(w_down.dtype()), " and gu ",
           dtype_name(gu.dtype()), " (expected one dtype)");
  check_same_device(op, "dy", dy, "gu", gu);
  check_same_device(op, "w_down", w_down, "gu", gu);
  const int64_t rows = f > 0 ? gu.numel() / (2 * f) : 0;
  const Tensor dy2 = dy.contiguous().reshape({rows, w_down.size(0)});
#ifdef FG_CUDA
  if (gu.is_cuda() && rows > 0) {
    Tensor dgu = Tensor::empty(gu.shape(), gu.dtype(), gu.device());
    if (detail::swiglu_down_backward_cuda(dy2, w_down.contiguous(),
                                          gu.contiguous().reshape({rows, 2 * f}),
                                          dgu.reshape({rows, 2 * f})))
      return dgu;
  }
#endif
  return swiglu_backward(
      matmul(dy2, false, w_down.contiguous(), false).reshape(half_last(gu.shape())), gu);
}

namespace detail {

void swiglu_forward_cpu(const Tensor& gu, const Tensor& out) {
  dispatch_float("swiglu", gu.dtype(), [&]<class T>() {
    int64_t f = out.size(-1), rows = f ? out.numel() / f : 0;
    const T* p = gu.data<T>();
    T* po = out.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* g = p + r * 2 * f;  // gate half, then up half
      const T* u = g + f;
      for (int64_t j = 0; j < f; ++j) po[r * f + j] = g[j] * sigmoid(g[j]) * u[j];
    }
  });
}

void swiglu_backward_cpu(const Tensor& dout, const Tensor& gu, const Tensor& dgu) {
  dispatch_float("swiglu_backward", gu.dtype(), [&]<class T>() {
    int64_t f = dout.size(-1), rows = f ? dout.numel() / f : 0;
    const T* p = gu.data<T>();
    const T* pd = dout.data<T>();
    T* pdg = dgu.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* g = p + r * 2 * f;
      const T* u = g + f;
      T* dg = pdg + r * 2 * f;
      T* du = dg + f;
      for (int64_t j = 0; j < f; ++j) {
        T s = sigmoid(g[j]), d = pd[r * f + j];
        dg[j] = d * u[j] * s * (T(1) + g[j] * (T(1) - s));  // d silu/dg = s (1 + g (1 - s))
        du[j] = d * g[j] * s;
      }
    }
  });
}

}  // namespace detail

}  // namespace fg::ops
