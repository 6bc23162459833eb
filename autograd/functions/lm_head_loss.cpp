#include "autograd/functions/lm_head_loss.h"

#include "autograd/function.h"
#include "ops/grad_norm/grad_norm.h"
#include "ops/lm_head_loss/lm_head_loss.h"

namespace fg::ag {

Variable lm_head_loss(const Variable& y, const Variable& weight, const Tensor& targets,
                      int64_t chunk_rows) {
  ops::LMHeadLossOut r =
      ops::lm_head_loss(y.data(), weight.data(), targets, needs_grad({y, weight}), chunk_rows);
  return record("lm_head_loss", {y, weight}, {r.loss},
                [dy = r.dy, dw = r.dweight](const std::vector<Tensor>& g) {
                  // g[0]: 1, or 1 / micro-batches under accumulation. Scaled on the
                  // device without reading it back (the common 1 costs one launch).
                  ops::scale_grads({dy, dw}, g[0]);
                  return std::vector<Tensor>{dy, dw};
                })[0];
}

}  // namespace fg::ag
