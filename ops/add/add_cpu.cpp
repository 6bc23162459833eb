#include "ops/add/add.h"

namespace fg::ops {

namespace {
void check_add(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, "a", a);
  check_defined(op, "b", b);
  FG_CHECK(a.shape() == b.shape(), op, ": a is ", a.shape_str(), " but b is ", b.shape_str());
  FG_CHECK(a.dtype() == b.dtype(), op, ": a is ", dtype_name(a.dtype()), " but b is ",
           dtype_name(b.dtype()));
  check_same_device(op, "a", a, "b", b);
}

// Runs the device's kernel on contiguous operands.
void add_into(const Tensor& a, const Tensor& b, const Tensor& out) {
#ifdef FG_CUDA
  if (out.is_cuda()) return detail::add_cuda(a, b, out);
#endif
  detail::add_cpu(a, b, out);
}
}  // namespace

Tensor add_forward(const Tensor& a, const Tensor& b) {
  check_add("add", a, b);
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  add_into(a.contiguous(), b.contiguous(), out);
  return out;
}

void add_inplace(const Tensor& dst, const Tensor& src) {
  check_add("add_inplace", dst, src);
  FG_CHECK(dst.is_contiguous(), "add_inplace: destination ", dst.shape_str(), " is not contiguous");
  add_into(dst, src.contiguous(), dst);
}

namespace detail {
void add_cpu(const Tensor& a, const Tensor& b, const Tensor& out) {
  if (a.dtype() == DType::BF16) {  // no bf16 arithmetic on the CPU: round-trip through f32
    Tensor r = add_forward(a.to(DType::F32), b.to(DType::F32));
    out.copy_(r);
    return;
  }
  dispatch_float("add", a.dtype(), [&]<class T>() {
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* po = out.data<T>();
    for (int64_t i = 0, n = a.numel(); i < n; ++i) po[i] = pa[i] + pb[i];
  });
}
}  // namespace detail

}  // namespace fg::ops
