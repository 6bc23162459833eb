#include "autograd/functions/linear.h"

#include "autograd/function.h"
#include "ops/gemm/gemm.h"
#include "ops/linear/linear.h"

namespace fg::ag {

Variable linear(const Variable& x, const Variable& weight, const Variable& bias,
                const Variable& residual) {
  Tensor y = ops::linear_forward(x.data(), weight.data(), bias.defined() ? bias.data() : Tensor(),
                                 residual.defined() ? residual.data() : Tensor());
  return record_linear(x, weight, bias, std::move(y), residual);
}

Variable record_linear(const Variable& x, const Variable& weight, const Variable& bias, Tensor y,
                       const Variable& residual) {
  bool has_bias = bias.defined();
  // A weight cast from a parameter: its gradient goes straight into the
  // parameter's buffer (autograd/function.h), so the parameter is the input.
  const Variable master = cast_source(weight);
  const Variable& w_in = master.defined() ? master : weight;
  // dx = dy @ W, dW = dy^T @ x, db = column sums of dy: saves x and W, never y.
  bool x_grad = x.requires_grad(), w_grad = w_in.requires_grad(), b_grad = bias.requires_grad();
  bool r_grad = residual.requires_grad();
  return record("linear", {x, w_in, bias, residual}, {y},
                [xd = x.data(), wd = weight.data(), master, has_bias, x_grad, w_grad, b_grad,
                 r_grad](const std::vector<Tensor>& g) {
                  // master is defined only for a weight cast from a parameter that wants
                  // a gradient (cast_source), so w_grad holds whenever there is a buffer.
                  const GradBuffer into = leaf_grad_buffer(master, [&](DType c) {
                    return ops::gemm_accepts(xd.dtype(), c, xd.device());
                  });
                  ops::LinearGrads d = ops::linear_backward(g[0], xd, wd, has_bias && b_grad,
                                                            into.buffer, into.add);
                  return std::vector<Tensor>{x_grad ? d.dx : Tensor(),
                                             w_grad ? d.dweight : Tensor(), d.dbias,
                                             r_grad ? g[0] : Tensor()};
                })[0];
}

}  // namespace fg::ag
