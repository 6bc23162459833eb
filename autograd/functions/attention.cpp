#include "autograd/functions/attention.h"

#include "autograd/function.h"
#include "ops/attention/attention.h"

namespace fg::ag {

Variable attention(const Variable& q, const Variable& k, const Variable& v) {
  ops::AttentionOut r = ops::attention_forward(q.data(), k.data(), v.data());
  // Backward recomputes the probabilities from q, k and the log-sum-exp.
  return record("attention", {q, k, v}, {r.out},
                [q = q.data(), k = k.data(), v = v.data(), out = r.out,
                 lse = r.lse](const std::vector<Tensor>& g) {
                  ops::AttentionGrads d = ops::attention_backward(g[0], q, k, v, out, lse);
                  return std::vector<Tensor>{d.dq, d.dk, d.dv};
                })[0];
}

}  // namespace fg::ag
