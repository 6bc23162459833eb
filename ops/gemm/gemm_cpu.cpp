#include "ops/gemm/gemm.h"

#include <vector>

namespace fg::ops {

namespace {
void check_matrix(const char* name, const Tensor& t) {
  check_defined("gemm", name, t);
  FG_CHECK(t.dim() == 2, "gemm: ", name, " must be 2-D, got ", t.shape_str());
  FG_CHECK(t.strides()[1] == 1 || t.size(1) == 1, "gemm: ", name, " ", t.shape_str(),
           " needs a contiguous last dimension");
}
}  // namespace

namespace detail {
void check_gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                const Tensor& bias, const Tensor& addend) {
  check_matrix("a", a);
  check_matrix("b", b);
  check_matrix("c", c);
  int64_t m = trans_a ? a.size(1) : a.size(0), k = trans_a ? a.size(0) : a.size(1);
  int64_t kb = trans_b ? b.size(1) : b.size(0), n = trans_b ? b.size(0) : b.size(1);
  FG_CHECK(k == kb, "gemm: op(a) is (", m, ", ", k, ") but op(b) is (", kb, ", ", n, ")");
  FG_CHECK(c.size(0) == m && c.size(1) == n, "gemm: c is ", c.shape_str(), " but op(a) @ op(b) is (",
           m, ", ", n, ")");
  check_same_device("gemm", "a", a, "b", b);
  check_same_device("gemm", "a", a, "c", c);
  FG_CHECK(a.dtype() == b.dtype() && gemm_accepts(a.dtype(), c.dtype(), c.device()),
           "gemm: dtypes differ: a ", dtype_name(a.dtype()), ", b ", dtype_name(b.dtype()), ", c ",
           dtype_name(c.dtype()));
  if (bias.defined()) {
    check_shape("gemm", "bias", bias, {n});
    check_same_device("gemm", "a", a, "bias", bias);
    check_dtype("gemm", "bias", bias, c.dtype());
  }
  if (addend.defined()) {
    check_shape("gemm", "addend", addend, c.shape());
    check_same_device("gemm", "c", c, "addend", addend);
    check_dtype("gemm", "addend", addend, c.dtype());
  }
}
}  // namespace detail

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
          double alpha, double beta, const Tensor& bias, const Tensor& addend) {
  detail::check_gemm(a, trans_a, b, trans_b, c, bias, addend);
#ifdef FG_CUDA
  if (c.is_cuda()) return detail::gemm_cuda(a, trans_a, b, trans_b, c, alpha, beta, bias, addend);
#endif
  if (addend.defined()) c.copy_(addend);  // the reference: beta * c then reads the addend
  // The reference computes in c's dtype: wider operands are converted first.
  if (a.dtype() != c.dtype())
    return detail::gemm_cpu(a.to(c.dtype()), trans_a, b.to(c.dtype()), trans_b, c, alpha, beta,
                            bias);
  detail::gemm_cpu(a, trans_a, b, trans_b, c, alpha, beta, bias);
}

void set_gemm_tuning(bool on) {
#ifdef FG_CUDA
  detail::set_gemm_tuning_cuda(on);
#endif
  (void)on;  // the CPU has one algorithm
}

bool gemm_accepts(DType ab, DType c, Device device) {
  if (ab == c) return true;
  if (ab == DType::BF16 && c == DType::F32) return true;
  return device.is_cpu() && ab == DType::F32 && c == DType::F64;
}

size_t gemm_workspace_bytes(Device device) {
#ifdef FG_CUDA
  if (device.is_cuda()) return detail::gemm_cuda_workspace_bytes();
#endif
  (void)device;
  return 0;
}

Tensor matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b) {
  FG_CHECK(a.dim() == 2 && b.dim() == 2, "matmul: a ", a.shape_str(), " and b ", b.shape_str(),
           " must be 2-D");
  int64_t m = trans_a ? a.size(1) : a.size(0), n = trans_b ? b.size(0) : b.size(1);
  Tensor c = Tensor::empty({m, n}, a.dtype(), a.device());
  gemm(a, trans_a, b, trans_b, c);
  return c;
}

namespace detail {

void gemm_cpu(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
              double alpha, double beta, const Tensor& bias) {
  // b as a contiguous (k, n) matrix: every row of C is then a sum of scaled rows
  // of b, an axpy the compiler vectorizes (dot products along k would not be).
  Tensor bk = trans_b ? b.transpose(0, 1).contiguous() : b.contiguous();
  dispatch_float("gemm", c.dtype(), [&]<class T>() {
    const int64_t m = c.size(0), n = c.size(1), k = bk.size(0);
    const int64_t lda = a.strides()[0], ldc = c.strides()[0];
    const T* pa = a.data<T>();
    const T* pb = bk.data<T>();
    T* pc = c.data<T>();
    const T* pbias = bias.defined() ? bias.data<T>() : nullptr;
    // Rows are independent, so threads give bit-identical results; small products
  // stay on one thread, where waking the others would cost more than it saves.
  constexpr int64_t kParallelWork = int64_t{1} << 20;
#pragma omp parallel for schedule(static) if (m * n * k >= kParallelWork)
    for (int64_t i = 0; i < m; ++i) {
      std::vector<T> row(n, T(0));
      for (int64_t p = 0; p < k; ++p) {
        const T av = trans_a ? pa[p * lda + i] : pa[i * lda + p];
        const T* brow = pb + p * n;
        for (int64_t j = 0; j < n; ++j) row[j] += av * brow[j];
      }
      T* crow = pc + i * ldc;
      for (int64_t j = 0; j < n; ++j) {
        T v = static_cast<T>(alpha) * row[j] + (pbias ? pbias[j] : T(0));
        crow[j] = beta == 0.0 ? v : v + static_cast<T>(beta) * crow[j];
      }
    }
  });
}

}  // namespace detail

}  // namespace fg::ops
