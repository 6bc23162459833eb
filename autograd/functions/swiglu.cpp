#include "autograd/functions/swiglu.h"

#include "autograd/function.h"
#include "ops/swiglu/swiglu.h"

namespace fg::ag {

Variable swiglu(const Variable& gu) {
  Tensor out = ops::swiglu_forward(gu.data());  // (..., F)
  // Backward recomputes silu from gu; out is not saved.
  return record("swiglu", {gu}, {out}, [gu = gu.data()](const std::vector<Tensor>& g) {
    return std::vector<Tensor>{ops::swiglu_backward(g[0], gu)};
  })[0];
}

}  // namespace fg::ag
