// Cross-entropy: the public entries (checks, device dispatch) and the CPU reference.
#include <cmath>

#include "ops/cross_entropy/cross_entropy.h"

namespace fg::ops {

namespace {
void check_logits_targets(const char* op, const Tensor& logits, const Tensor& targets) {
  check_defined(op, "logits", logits);
  check_defined(op, "targets", targets);
  FG_CHECK(logits.dim() == 2, op, ": logits must be (N, V), got ", logits.shape_str());
  FG_CHECK(logits.dtype() != DType::I32, op, ": logits must be a float tensor, got ",
           logits.describe());
  check_dtype(op, "targets", targets, DType::I32);
  FG_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0), op, ": logits is ",
           logits.shape_str(), " but targets is ", targets.shape_str());
  check_same_device(op, "logits", logits, "targets", targets);
}

// The loss and lse keep fp32 for f32 and bf16 logits, f64 for f64.
DType loss_dtype(DType logits) {
  return logits == DType::F64 ? DType::F64 : DType::F32;
}
}  // namespace

CrossEntropyOut cross_entropy_forward(const Tensor& logits, const Tensor& targets) {
  check_logits_targets("cross_entropy", logits, targets);
  FG_CHECK(logits.size(1) > 0, "cross_entropy: logits ", logits.shape_str(),
           " has an empty vocabulary");
  CrossEntropyOut r;
  DType dt = loss_dtype(logits.dtype());
  r.loss = Tensor::empty({}, dt, logits.device());
  r.lse = Tensor::empty({logits.size(0)}, dt, logits.device());  // (N)
#ifdef FG_CUDA
  if (logits.is_cuda()) {
    r.count = detail::cross_entropy_forward_cuda(logits.contiguous(), targets.contiguous(), r.loss,
                                                 r.lse);
    return r;
  }
#endif
  r.count =
      detail::cross_entropy_forward_cpu(logits.contiguous(), targets.contiguous(), r.loss, r.lse);
  return r;
}

Tensor cross_entropy_backward(double dloss, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, int64_t count) {
  check_logits_targets("cross_entropy_backward", logits, targets);
  check_shape("cross_entropy_backward", "lse", lse, {logits.size(0)});
  check_dtype("cross_entropy_backward", "lse", lse, loss_dtype(logits.dtype()));
  check_same_device("cross_entropy_backward", "logits", logits, "lse", lse);
  FG_CHECK(count >= 0 && count <= logits.size(0), "cross_entropy_backward: count ", count,
           " is outside [0, ", logits.size(0), "] for logits ", logits.shape_str());
  Tensor dlogits = Tensor::empty(logits.shape(), logits.dtype(), logits.device());  // (N, V)
#ifdef FG_CUDA
  if (logits.is_cuda()) {
    detail::cross_entropy_backward_cuda(dloss, logits.contiguous(), targets.contiguous(),
                                        lse.contiguous(), count, dlogits);
    return dlogits;
  }
#endif
  detail::cross_entropy_backward_cpu(dloss, logits.contiguous(), targets.contiguous(),
                                     lse.contiguous(), count, dlogits);
  return dlogits;
}

namespace detail {

namespace {
void check_target_range(const char* op, const int32_t* t, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; ++i)
    FG_CHECK(t[i] == kIgnoreIndex || (t[i] >= 0 && t[i] < vocab), op, ": target ", t[i], " at row ",
             i, " is out of range for vocab size ", vocab, " (use ", kIgnoreIndex,
             " to ignore a row)");
}
}  // namespace

int64_t cross_entropy_forward_cpu(const Tensor& logits, const Tensor& targets, const Tensor& loss,
                                  const Tensor& lse) {
  int64_t n = logits.size(0), v = logits.size(1);
  const int32_t* pt = targets.data<int32_t>();
  check_target_range("cross_entropy", pt, n, v);
  int64_t count = 0;
  dispatch_float("cross_entropy", logits.dtype(), [&]<class T>() {
    const T* pl = logits.data<T>();
    T* plse = lse.data<T>();
    T total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T* row = pl + i * v;
      T m = row[0];
      for (int64_t j = 1; j < v; ++j) m = std::max(m, row[j]);
      T s = 0;
      for (int64_t j = 0; j < v; ++j) s += std::exp(row[j] - m);  // max-subtracted: no overflow
      plse[i] = m + std::log(s);
      if (pt[i] == kIgnoreIndex) continue;
      total += plse[i] - row[pt[i]];
      ++count;
    }
    loss.data<T>()[0] = count ? total / static_cast<T>(count) : T(0);
  });
  return count;
}

void cross_entropy_backward_cpu(double dloss, const Tensor& logits, const Tensor& targets,
                                const Tensor& lse, int64_t count, const Tensor& dlogits) {
  int64_t n = logits.size(0), v = logits.size(1);
  const int32_t* pt = targets.data<int32_t>();
  check_target_range("cross_entropy_backward", pt, n, v);
  dispatch_float("cross_entropy_backward", logits.dtype(), [&]<class T>() {
    const T* pl = logits.data<T>();
    const T* plse = lse.data<T>();
    T* pd = dlogits.data<T>();
    T scale = count ? static_cast<T>(dloss / static_cast<double>(count)) : T(0);
    for (int64_t i = 0; i < n; ++i) {
      T* drow = pd + i * v;
      if (pt[i] == kIgnoreIndex || count == 0) {
        std::fill(drow, drow + v, T(0));
        continue;
      }
      const T* row = pl + i * v;
      for (int64_t j = 0; j < v; ++j) drow[j] = scale * std::exp(row[j] - plse[i]);  // softmax
      drow[pt[i]] -= scale;
    }
  });
}

}  // namespace detail

}  // namespace fg::ops
