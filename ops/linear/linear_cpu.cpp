// Linear: y = x @ W^T + b over the leading dims of x, through ops::gemm on
// either device; only the bias gradient (a column sum) has kernels of its own.
#include <vector>

#include "ops/gemm/gemm.h"
#include "ops/linear/linear.h"

namespace fg::ops {

namespace {
// x (..., in) -> the row count of x viewed as (rows, in).
int64_t check_linear(const char* op, const Tensor& x, const Tensor& weight) {
  check_defined(op, "x", x);
  check_defined(op, "weight", weight);
  FG_CHECK(weight.dim() == 2, op, ": weight must be (out, in), got ", weight.shape_str());
  FG_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), op, ": x is ", x.shape_str(),
           " but weight is ", weight.shape_str());
  FG_CHECK(x.dtype() == weight.dtype(), op, ": x is ", dtype_name(x.dtype()), " but weight is ",
           dtype_name(weight.dtype()));
  FG_CHECK(x.dtype() != DType::I32, op, ": x must be a float tensor, got ", x.describe());
  check_same_device(op, "x", x, "weight", weight);
  return shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
}

// dy2 (rows, out)^T @ x2 (rows, in), or into (or added to) the given buffer: a
// parameter's gradient, which nothing reads before the optimizer, so the product may
// wait in an open GemmBatch.
Tensor weight_grad(const char* op, const Tensor& dy2, const Tensor& x2, const Tensor& weight,
                   const Tensor& dweight_into, bool dweight_add) {
  if (!dweight_into.defined()) return matmul(dy2, true, x2, false);
  check_shape(op, "dweight_into", dweight_into, weight.shape());
  FG_CHECK(dweight_into.is_contiguous(), op, ": dweight_into ", dweight_into.shape_str(),
           " is not contiguous");
  gemm_batchable(dy2, true, x2, false, dweight_into, 1.0, dweight_add ? 1.0 : 0.0);
  return dweight_into;
}
}  // namespace

Tensor linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                      const Tensor& residual) {
  int64_t rows = check_linear("linear", x, weight);
  int64_t out_features = weight.size(0);
  if (bias.defined()) {
    FG_CHECK(bias.dim() == 1 && bias.size(0) == out_features, "linear: bias is ", bias.shape_str(),
             " but weight is ", weight.shape_str());
    FG_CHECK(bias.dtype() == x.dtype(), "linear: bias is ", dtype_name(bias.dtype()), " but x is ",
             dtype_name(x.dtype()));
    check_same_device("linear", "x", x, "bias", bias);
  }
  Shape y_shape = x.shape();
  y_shape.back() = out_features;
  if (residual.defined()) {
    FG_CHECK(residual.shape() == y_shape, "linear: residual is ", residual.shape_str(),
             " but x @ weight^T is ", shape_str(y_shape));
    check_dtype("linear", "residual", residual, x.dtype());
    check_same_device("linear", "x", x, "residual", residual);
  }
  Tensor y = Tensor::empty(y_shape, x.dtype(), x.device());  // (..., out)
  gemm(x.contiguous().view({rows, x.size(-1)}), false, weight.contiguous(), true,
       y.view({rows, out_features}), 1.0, residual.defined() ? 1.0 : 0.0,
       bias.defined() ? bias.contiguous() : Tensor(),
       residual.defined() ? residual.contiguous().view({rows, out_features}) : Tensor());
  return y;
}

LinearGrads linear_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, bool has_bias,
                            const Tensor& dweight_into, bool dweight_add) {
  int64_t rows = check_linear("linear_backward", x, weight);
  check_defined("linear_backward", "dy", dy);
  Shape y_shape = x.shape();
  y_shape.back() = weight.size(0);
  FG_CHECK(dy.shape() == y_shape, "linear_backward: dy is ", dy.shape_str(), " but x ",
           x.shape_str(), " @ weight^T ", weight.shape_str(), " is ", shape_str(y_shape));
  FG_CHECK(dy.dtype() == x.dtype(), "linear_backward: dy is ", dtype_name(dy.dtype()), " but x is ",
           dtype_name(x.dtype()));
  check_same_device("linear_backward", "dy", dy, "x", x);
  Tensor dy2 = dy.contiguous().view({rows, weight.size(0)});  // (rows, out)
  Tensor x2 = x.contiguous().view({rows, weight.size(1)});    // (rows, in)
  LinearGrads g;
  g.dx = matmul(dy2, false, weight.contiguous(), false).view(x.shape());  // dy @ W
  g.dweight = weight_grad("linear_backward", dy2, x2, weight, dweight_into, dweight_add);
  if (has_bias) g.dbias = column_sums(dy2);
  return g;
}

Tensor linear_weight_grad(const Tensor& dy, const Tensor& x, const Tensor& weight,
                          const Tensor& dweight_into, bool dweight_add) {
  const int64_t rows = check_linear("linear_weight_grad", x, weight);
  check_defined("linear_weight_grad", "dy", dy);
  FG_CHECK(dy.dim() >= 1 && dy.size(-1) == weight.size(0) && dy.numel() == rows * weight.size(0),
           "linear_weight_grad: dy is ", dy.shape_str(), " but x is ", x.shape_str(),
           " and weight ", weight.shape_str());
  FG_CHECK(dy.dtype() == x.dtype(), "linear_weight_grad: dy is ", dtype_name(dy.dtype()),
           " but x is ", dtype_name(x.dtype()));
  check_same_device("linear_weight_grad", "dy", dy, "x", x);
  return weight_grad("linear_weight_grad", dy.contiguous().view({rows, weight.size(0)}),
                     x.contiguous().view({rows, weight.size(1)}), weight, dweight_into,
                     dweight_add);
}

Tensor column_sums(const Tensor& x) {
  FG_CHECK(x.dim() == 2 && x.is_contiguous(), "column_sums: x ", x.shape_str(),
           " is not a contiguous matrix");
  Tensor sums = Tensor::empty({x.size(1)}, x.dtype(), x.device());
#ifdef FG_CUDA
  if (x.is_cuda()) {
    detail::column_sum_cuda(x, sums);
    return sums;
  }
#endif
  detail::column_sum_cpu(x, sums);
  return sums;
}

namespace detail {

// Summed in f64 in row order: the same bits as the column sums RoPE's backward pack
// takes on the way (rope_cpu.cpp), so the fused layer's bias gradient does not depend
// on which of its two backward entries ran.
void column_sum_cpu(const Tensor& dy, const Tensor& db) {
  dispatch_float("linear_backward", dy.dtype(), [&]<class T>() {
    int64_t rows = dy.size(0), cols = dy.size(1);
    const T* p = dy.data<T>();
    std::vector<double> sums(cols, 0.0);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) sums[j] += static_cast<double>(p[i * cols + j]);
    T* out = db.data<T>();
    for (int64_t j = 0; j < cols; ++j) out[j] = static_cast<T>(sums[j]);
  });
}

}  // namespace detail

}  // namespace fg::ops
