// Embedding: the public entries (checks, device dispatch) and the CPU reference.
#include <algorithm>
#include <numeric>
#include <vector>

#include "ops/embedding/embedding.h"

namespace fg::ops {

namespace {
void check_ids(const char* op, const Tensor& ids, const Tensor& other, const char* other_name) {
  check_dtype(op, "ids", ids, DType::I32);
  check_same_device(op, "ids", ids, other_name, other);
}

void check_float(const char* op, const char* name, const Tensor& t) {
  FG_CHECK(t.dtype() != DType::I32, op, ": ", name, " must be a float tensor, got ", t.describe());
}

// CPU side: every id in [0, vocab_size), or an error naming the first bad one.
void check_id_range(const char* op, const int32_t* ids, int64_t n, int64_t vocab_size) {
  for (int64_t i = 0; i < n; ++i)
    FG_CHECK(ids[i] >= 0 && ids[i] < vocab_size, op, ": id ", ids[i], " at position ", i,
             " is out of range for vocab size ", vocab_size);
}
}  // namespace

Tensor embedding_forward(const Tensor& weight, const Tensor& ids) {
  check_defined("embedding", "weight", weight);
  check_defined("embedding", "ids", ids);
  FG_CHECK(weight.dim() == 2, "embedding: weight must be (V, D), got ", weight.shape_str());
  check_float("embedding", "weight", weight);
  check_ids("embedding", ids, weight, "weight");
  Shape out_shape = ids.shape();
  out_shape.push_back(weight.size(1));  // ids.shape + (D)
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
#ifdef FG_CUDA
  if (weight.is_cuda()) {
    detail::embedding_forward_cuda(weight.contiguous(), ids.contiguous(), out);
    return out;
  }
#endif
  detail::embedding_forward_cpu(weight.contiguous(), ids.contiguous(), out);
  return out;
}

bool embedding_backward_accepts(DType grad, DType into) {
  return grad == into || (grad == DType::BF16 && into == DType::F32) ||
         (grad == DType::F32 && into == DType::F64);
}

Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t vocab_size,
                          const Tensor& into, bool add) {
  const char* op = "embedding_backward";
  check_defined(op, "grad_out", grad_out);
  check_defined(op, "ids", ids);
  check_float(op, "grad_out", grad_out);
  check_ids(op, ids, grad_out, "grad_out");
  FG_CHECK(vocab_size > 0, op, ": vocab size must be positive, got ", vocab_size);
  FG_CHECK(grad_out.dim() == ids.dim() + 1, op, ": grad_out is ", grad_out.shape_str(),
           " but ids is ", ids.shape_str(), " (expected ids.shape + (D))");
  Shape lead(grad_out.shape().begin(), grad_out.shape().end() - 1);
  FG_CHECK(lead == ids.shape(), op, ": grad_out is ", grad_out.shape_str(), " but ids is ",
           ids.shape_str(), " (expected ids.shape + (D))");
  const Shape weight_shape{vocab_size, grad_out.size(-1)};
  Tensor grad_weight = into;
  if (into.defined()) {
    FG_CHECK(into.shape() == weight_shape && into.is_contiguous(), op, ": into is ",
             into.describe(), " but the gradient is a contiguous ", shape_str(weight_shape));
    FG_CHECK(embedding_backward_accepts(grad_out.dtype(), into.dtype()), op, ": into is ",
             dtype_name(into.dtype()), " but grad_out is ", dtype_name(grad_out.dtype()),
             " (expected the same dtype or a wider one)");
    check_same_device(op, "into", into, "grad_out", grad_out);
  } else {
    add = false;
    grad_weight = Tensor::empty(weight_shape, grad_out.dtype(), grad_out.device());
  }
#ifdef FG_CUDA
  if (grad_out.is_cuda()) {
    detail::embedding_backward_cuda(grad_out.contiguous(), ids.contiguous(), grad_weight, add);
    return grad_weight;
  }
#endif
  detail::embedding_backward_cpu(grad_out.contiguous(), ids.contiguous(), grad_weight, add);
  return grad_weight;
}

namespace detail {

void embedding_forward_cpu(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  int64_t n = ids.numel(), vocab = weight.size(0), d = weight.size(1);
  const int32_t* pid = ids.data<int32_t>();
  check_id_range("embedding", pid, n, vocab);
  dispatch_float("embedding", weight.dtype(), [&]<class T>() {
    const T* pw = weight.data<T>();
    T* po = out.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      const T* row = pw + pid[i] * d;
      std::copy(row, row + d, po + i * d);
    }
  });
}

void embedding_backward_cpu(const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight,
                            bool add) {
  const int64_t n = ids.numel(), vocab = grad_weight.size(0), d = grad_weight.size(1);
  const int32_t* pid = ids.data<int32_t>();
  check_id_range("embedding_backward", pid, n, vocab);
  // Each row's gradients summed in position order, then added to what the row
  // holds (the GPU sums pieces of 16 first: the same sums up to rounding).
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return pid[a] < pid[b]; });
  const Tensor g = grad_out.to(grad_weight.dtype());  // bf16 -> f32 is exact
  dispatch_float("embedding_backward", grad_weight.dtype(), [&]<class T>() {
    const T* pg = g.data<T>();
    T* pw = grad_weight.data<T>();
    std::vector<T> sum(d);
    size_t at = 0;
    for (int64_t row = 0; row < vocab; ++row) {
      if (at == order.size() || pid[order[at]] != row) {
        if (!add) std::fill(pw + row * d, pw + (row + 1) * d, T(0));
        continue;
      }
      std::fill(sum.begin(), sum.end(), T(0));
      for (; at < order.size() && pid[order[at]] == row; ++at)
        for (int64_t j = 0; j < d; ++j) sum[j] += pg[order[at] * d + j];
      for (int64_t j = 0; j < d; ++j) pw[row * d + j] = sum[j] + (add ? pw[row * d + j] : T(0));
    }
  });
}

}  // namespace detail

}  // namespace fg::ops
