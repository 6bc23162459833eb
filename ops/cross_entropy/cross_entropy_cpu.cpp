// Cross-entropy: the public entries (checks, device dispatch) and the CPU reference.
#include <cmath>

#include "ops/cross_entropy/cross_entropy.h"

namespace fg::ops {

namespace {
void check_targets(const char* op, const Tensor& targets) {
  check_defined(op, "targets", targets);
  check_dtype(op, "targets", targets, DType::I32);
  FG_CHECK(targets.dim() == 1, op, ": targets must be (N), got ", targets.shape_str());
}

void check_logits_targets(const char* op, const Tensor& logits, const Tensor& targets) {
  check_defined(op, "logits", logits);
  check_targets(op, targets);
  FG_CHECK(logits.dim() == 2, op, ": logits must be (N, V), got ", logits.shape_str());
  FG_CHECK(logits.dtype() != DType::I32, op, ": logits must be a float tensor, got ",
           logits.describe());
  FG_CHECK(targets.size(0) == logits.size(0), op, ": logits is ", logits.shape_str(),
           " but targets is ", targets.shape_str());
  check_same_device(op, "logits", logits, "targets", targets);
}

void check_count(const char* op, const Tensor& count, const Tensor& logits) {
  check_shape(op, "count", count, {});
  check_dtype(op, "count", count, DType::I32);
  check_same_device(op, "logits", logits, "count", count);
}

// Whether t's rows are contiguous and apart: what the kernels read (a row stride past the
// row, as padded logits have, is fine).
bool rows_dense(const Tensor& t) {
  return (t.strides()[1] == 1 || t.size(1) <= 1) && (t.size(0) <= 1 || t.strides()[0] >= t.size(1));
}

// t, or a contiguous copy when its rows are not dense.
Tensor with_dense_rows(const Tensor& t) {
  return rows_dense(t) ? t : t.contiguous();
}

// The loss and lse keep fp32 for f32 and bf16 logits, f64 for f64.
DType loss_dtype(DType logits) {
  return logits == DType::F64 ? DType::F64 : DType::F32;
}
}  // namespace

Tensor count_targets(const Tensor& targets) {
  check_targets("count_targets", targets);
  FG_CHECK(targets.size(0) < (int64_t{1} << 31), "count_targets: ", targets.size(0),
           " targets overflow the i32 count");
  Tensor count = Tensor::empty({}, DType::I32, targets.device());
#ifdef FG_CUDA
  if (targets.is_cuda()) {
    detail::count_targets_cuda(targets.contiguous(), count);
    return count;
  }
#endif
  detail::count_targets_cpu(targets.contiguous(), count);
  return count;
}

namespace {
// The forward outputs for these logits, with count checked or counted.
CrossEntropyOut forward_outputs(const char* op, const Tensor& logits, const Tensor& targets,
                                const Tensor& count) {
  check_logits_targets(op, logits, targets);
  FG_CHECK(logits.size(1) > 0, op, ": logits ", logits.shape_str(), " has an empty vocabulary");
  CrossEntropyOut r;
  if (count.defined()) {
    check_count(op, count, logits);
    r.count = count;
  } else {
    r.count = count_targets(targets);
  }
  DType dt = loss_dtype(logits.dtype());
  r.loss = Tensor::empty({}, dt, logits.device());
  r.lse = Tensor::empty({logits.size(0)}, dt, logits.device());  // (N)
  return r;
}

// dloss checked and in the loss dtype of these logits (the kernels read that one).
Tensor checked_dloss(const char* op, const Tensor& dloss, const Tensor& logits) {
  check_shape(op, "dloss", dloss, {});
  FG_CHECK(dloss.dtype() != DType::I32, op, ": dloss must be a float tensor, got ",
           dloss.describe());
  check_same_device(op, "logits", logits, "dloss", dloss);
  const DType dt = loss_dtype(logits.dtype());
  return dloss.dtype() == dt ? dloss : dloss.to(dt);
}
}  // namespace

CrossEntropyOut cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                      const Tensor& count) {
  CrossEntropyOut r = forward_outputs("cross_entropy", logits, targets, count);
#ifdef FG_CUDA
  if (logits.is_cuda()) {
    detail::cross_entropy_forward_cuda(with_dense_rows(logits), targets.contiguous(), r.count,
                                       r.loss, r.lse);
    return r;
  }
#endif
  detail::cross_entropy_forward_cpu(with_dense_rows(logits), targets.contiguous(), r.count, r.loss,
                                    r.lse);
  return r;
}

Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, const Tensor& count) {
  const char* op = "cross_entropy_backward";
  check_logits_targets(op, logits, targets);
  check_shape(op, "lse", lse, {logits.size(0)});
  check_dtype(op, "lse", lse, loss_dtype(logits.dtype()));
  check_same_device(op, "logits", logits, "lse", lse);
  check_count(op, count, logits);
  const Tensor dloss_c = checked_dloss(op, dloss, logits);
  Tensor dlogits = Tensor::empty(logits.shape(), logits.dtype(), logits.device());  // (N, V)
#ifdef FG_CUDA
  if (logits.is_cuda()) {
    detail::cross_entropy_backward_cuda(dloss_c, with_dense_rows(logits), targets.contiguous(),
                                        lse.contiguous(), count, dlogits);
    return dlogits;
  }
#endif
  detail::cross_entropy_backward_cpu(dloss_c, with_dense_rows(logits), targets.contiguous(),
                                     lse.contiguous(), count, dlogits);
  return dlogits;
}

CrossEntropyOut cross_entropy_with_grad(const Tensor& logits, const Tensor& targets,
                                        const Tensor& count, const Tensor& dloss) {
  const char* op = "cross_entropy_with_grad";
  CrossEntropyOut r = forward_outputs(op, logits, targets, count);
  FG_CHECK(rows_dense(logits), op, ": logits ", logits.shape_str(),
           " must have contiguous rows (dlogits are written over them)");
  const Tensor dloss_c = checked_dloss(op, dloss, logits);
  const Tensor t = targets.contiguous();
#ifdef FG_CUDA
  if (logits.is_cuda()) {
    detail::cross_entropy_fused_cuda(logits, t, r.count, dloss_c, r.loss, r.lse);
    return r;
  }
#endif
  // The reference: forward, then backward in place (each element is read before
  // it is written).
  detail::cross_entropy_forward_cpu(logits, t, r.count, r.loss, r.lse);
  detail::cross_entropy_backward_cpu(dloss_c, logits, t, r.lse, r.count, logits);
  return r;
}

namespace detail {

namespace {
void check_target_range(const char* op, const int32_t* t, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; ++i)
    FG_CHECK(t[i] == kIgnoreIndex || (t[i] >= 0 && t[i] < vocab), op, ": target ", t[i], " at row ",
             i, " is out of range for vocab size ", vocab, " (use ", kIgnoreIndex,
             " to ignore a row)");
}

int32_t read_count(const char* op, const Tensor& count) {
  int32_t c = count.data<int32_t>()[0];
  FG_CHECK(c >= 0, op, ": count ", c, " is negative");
  return c;
}
}  // namespace

void count_targets_cpu(const Tensor& targets, const Tensor& count) {
  const int32_t* pt = targets.data<int32_t>();
  int32_t c = 0;
  for (int64_t i = 0, n = targets.numel(); i < n; ++i) c += pt[i] != kIgnoreIndex ? 1 : 0;
  count.data<int32_t>()[0] = c;
}

void cross_entropy_forward_cpu(const Tensor& logits, const Tensor& targets, const Tensor& count,
                               const Tensor& loss, const Tensor& lse) {
  int64_t n = logits.size(0), v = logits.size(1), ld = row_stride(logits);
  const int32_t* pt = targets.data<int32_t>();
  check_target_range("cross_entropy", pt, n, v);
  int32_t c = read_count("cross_entropy", count);
  dispatch_float("cross_entropy", logits.dtype(), [&]<class T>() {
    const T* pl = logits.data<T>();
    T* plse = lse.data<T>();
    T total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T* row = pl + i * ld;
      T m = row[0];
      for (int64_t j = 1; j < v; ++j) m = std::max(m, row[j]);
      T s = 0;
      for (int64_t j = 0; j < v; ++j) s += std::exp(row[j] - m);  // max-subtracted: no overflow
      plse[i] = m + std::log(s);
      if (pt[i] != kIgnoreIndex) total += plse[i] - row[pt[i]];
    }
    loss.data<T>()[0] = c ? total / static_cast<T>(c) : T(0);
  });
}

void cross_entropy_backward_cpu(const Tensor& dloss, const Tensor& logits, const Tensor& targets,
                                const Tensor& lse, const Tensor& count, const Tensor& dlogits) {
  int64_t n = logits.size(0), v = logits.size(1);
  int64_t ld = row_stride(logits), dld = row_stride(dlogits);
  const int32_t* pt = targets.data<int32_t>();
  check_target_range("cross_entropy_backward", pt, n, v);
  int32_t c = read_count("cross_entropy_backward", count);
  dispatch_float("cross_entropy_backward", logits.dtype(), [&]<class T>() {
    const T* pl = logits.data<T>();
    const T* plse = lse.data<T>();
    T* pd = dlogits.data<T>();
    T scale = c ? dloss.data<T>()[0] / static_cast<T>(c) : T(0);
    for (int64_t i = 0; i < n; ++i) {
      T* drow = pd + i * dld;
      if (pt[i] == kIgnoreIndex || c == 0) {
        std::fill(drow, drow + v, T(0));
        continue;
      }
      const T* row = pl + i * ld;
      for (int64_t j = 0; j < v; ++j) drow[j] = scale * std::exp(row[j] - plse[i]);  // softmax
      drow[pt[i]] -= scale;
    }
  });
}

}  // namespace detail

}  // namespace fg::ops
