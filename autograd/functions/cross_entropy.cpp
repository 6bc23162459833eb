#include "autograd/functions/cross_entropy.h"

#include "autograd/function.h"
#include "ops/cross_entropy/cross_entropy.h"

namespace fg::ag {

Variable cross_entropy(const Variable& logits, const Tensor& targets) {
  ops::CrossEntropyOut r = ops::cross_entropy_forward(logits.data(), targets);
  // Backward recomputes softmax from the logits and the per-row lse (N): no (N, V)
  // probabilities are kept.
  return record(
      "cross_entropy", {logits}, {r.loss},
      [logits = logits.data(), targets, lse = r.lse,
       count = r.count](const std::vector<Tensor>& g) {
        // g[0]: the incoming gradient of the scalar loss, read on the device
        return std::vector<Tensor>{ops::cross_entropy_backward(g[0], logits, targets, lse, count)};
      })[0];
}

}  // namespace fg::ag
