// Embedding: the public entries (checks, device dispatch) and the CPU reference.
#include <algorithm>

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

Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t vocab_size) {
  check_defined("embedding_backward", "grad_out", grad_out);
  check_defined("embedding_backward", "ids", ids);
  check_float("embedding_backward", "grad_out", grad_out);
  check_ids("embedding_backward", ids, grad_out, "grad_out");
  FG_CHECK(vocab_size > 0, "embedding_backward: vocab size must be positive, got ", vocab_size);
  FG_CHECK(grad_out.dim() == ids.dim() + 1, "embedding_backward: grad_out is ",
           grad_out.shape_str(), " but ids is ", ids.shape_str(), " (expected ids.shape + (D))");
  Shape lead(grad_out.shape().begin(), grad_out.shape().end() - 1);
  FG_CHECK(lead == ids.shape(), "embedding_backward: grad_out is ", grad_out.shape_str(),
           " but ids is ", ids.shape_str(), " (expected ids.shape + (D))");
  Tensor grad_weight =
      Tensor::empty({vocab_size, grad_out.size(-1)}, grad_out.dtype(), grad_out.device());
#ifdef FG_CUDA
  if (grad_out.is_cuda()) {
    detail::embedding_backward_cuda(grad_out.contiguous(), ids.contiguous(), grad_weight);
    return grad_weight;
  }
#endif
  detail::embedding_backward_cpu(grad_out.contiguous(), ids.contiguous(), grad_weight);
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

void embedding_backward_cpu(const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight) {
  int64_t n = ids.numel(), vocab = grad_weight.size(0), d = grad_weight.size(1);
  const int32_t* pid = ids.data<int32_t>();
  check_id_range("embedding_backward", pid, n, vocab);
  dispatch_float("embedding_backward", grad_out.dtype(), [&]<class T>() {
    const T* pg = grad_out.data<T>();
    T* pw = grad_weight.data<T>();
    std::fill(pw, pw + vocab * d, T(0));
    for (int64_t i = 0; i < n; ++i) {  // repeated ids accumulate
      T* row = pw + pid[i] * d;
      for (int64_t j = 0; j < d; ++j) row[j] += pg[i * d + j];
    }
  });
}

}  // namespace detail

}  // namespace fg::ops
