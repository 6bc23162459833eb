#include "autograd/functions/swiglu.h"

#include "autograd/function.h"
#include "autograd/functions/linear.h"
#include "ops/gemm/gemm.h"
#include "ops/linear/linear.h"
#include "ops/swiglu/swiglu.h"

namespace fg::ag {

Variable swiglu(const Variable& gu) {
  // backward recomputes silu from gu; out is not saved.
  return record("swiglu", {gu}, {ops::swiglu_forward(gu.data())},
                [gu = gu.data()](const std::vector<Tensor>& g) {
                  return std::vector<Tensor>{ops::swiglu_backward(g[0], gu)};
                })[0];
}

Variable swiglu_mlp(const Variable& x, const Variable& w_gate_up, const Variable& w_down,
                    const Variable& residual, bool compute_output) {
  ops::GateUpSwiGLU r = ops::gate_up_swiglu(x.data(), w_gate_up.data());
  const Variable gu = record_linear(x, w_gate_up, Variable(), r.gu);
  Shape y_shape = x.shape();
  y_shape.back() = w_down.size(0);
  Tensor y = compute_output ? ops::linear_forward(r.out, w_down.data(), Tensor(),
                                                  residual.defined() ? residual.data() : Tensor())
                            : Tensor::empty(y_shape, x.dtype(), x.device());
  // As in record_linear: a weight cast from a parameter hands its gradient straight to the
  // parameter's buffer. Saves swiglu(gu) (for dW) and gu, as the two unfused nodes would.
  const Variable master = cast_source(w_down);
  const Variable& w_in = master.defined() ? master : w_down;
  const bool gu_grad = gu.requires_grad(), w_grad = w_in.requires_grad();
  const bool r_grad = residual.requires_grad();
  return record("swiglu_down", {gu, w_in, residual}, {std::move(y)},
                [act = std::move(r.out), gud = gu.data(), wd = w_down.data(), master, gu_grad,
                 w_grad, r_grad](const std::vector<Tensor>& g) {
                  Tensor dw;
                  if (w_grad) {
                    const GradBuffer into = leaf_grad_buffer(master, [&](DType c) {
                      return ops::gemm_accepts(act.dtype(), c, act.device());
                    });
                    dw = ops::linear_weight_grad(g[0], act, wd, into.buffer, into.add);
                  }
                  return std::vector<Tensor>{
                      gu_grad ? ops::swiglu_down_backward(g[0], wd, gud) : Tensor(), dw,
                      r_grad ? g[0] : Tensor()};
                })[0];
}

}  // namespace fg::ag
