#include "autograd/functions/linear.h"

#include "autograd/function.h"
#include "ops/linear/linear.h"

namespace fg::ag {

Variable linear(const Variable& x, const Variable& weight, const Variable& bias) {
  bool has_bias = bias.defined();
  Tensor y = ops::linear_forward(x.data(), weight.data(), has_bias ? bias.data() : Tensor());
  // dx = dy @ W, dW = dy^T @ x, db = column sums of dy: saves x and W, never y.
  bool x_grad = x.requires_grad(), w_grad = weight.requires_grad(), b_grad = bias.requires_grad();
  return record("linear", {x, weight, bias}, {y},
                [xd = x.data(), wd = weight.data(), has_bias, x_grad, w_grad,
                 b_grad](const std::vector<Tensor>& g) {
                  ops::LinearGrads d = ops::linear_backward(g[0], xd, wd, has_bias && b_grad);
                  return std::vector<Tensor>{x_grad ? d.dx : Tensor(),
                                             w_grad ? d.dweight : Tensor(), d.dbias};
                })[0];
}

}  // namespace fg::ag
