#include "autograd/functions/swiglu.h"

#include "autograd/function.h"
#include "autograd/functions/linear.h"
#include "ops/swiglu/swiglu.h"

namespace fg::ag {

namespace {
// swiglu's node for out = swiglu(gu): backward recomputes silu from gu; out is not saved.
Variable record_swiglu(const Variable& gu, Tensor out) {
  return record("swiglu", {gu}, {std::move(out)}, [gu = gu.data()](const std::vector<Tensor>& g) {
    return std::vector<Tensor>{ops::swiglu_backward(g[0], gu)};
  })[0];
}
}  // namespace

Variable swiglu(const Variable& gu) {
  return record_swiglu(gu, ops::swiglu_forward(gu.data()));
}

Variable gate_up_swiglu(const Variable& x, const Variable& w_gate_up) {
  ops::GateUpSwiGLU r = ops::gate_up_swiglu(x.data(), w_gate_up.data());
  return record_swiglu(record_linear(x, w_gate_up, Variable(), std::move(r.gu)), std::move(r.out));
}

}  // namespace fg::ag
