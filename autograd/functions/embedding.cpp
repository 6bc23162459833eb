#include "autograd/functions/embedding.h"

#include "autograd/function.h"
#include "ops/embedding/embedding.h"

namespace fg::ag {

Variable embedding(const Variable& weight, const Tensor& ids) {
  Tensor out = ops::embedding_forward(weight.data(), ids);  // ids.shape + (D)
  int64_t vocab_size = weight.size(0);
  // A table cast from a parameter: its gradient is summed straight into the
  // parameter's buffer (autograd/function.h), so the parameter is the input.
  const Variable master = cast_source(weight);
  const Variable& w_in = master.defined() ? master : weight;
  // Backward scatter-adds rows: it needs the ids and the vocab size, not the weight.
  return record("embedding", {w_in}, {out},
                [ids, vocab_size, master](const std::vector<Tensor>& g) {
                  const GradBuffer into = leaf_grad_buffer(master, [&](DType c) {
                    return ops::embedding_backward_accepts(g[0].dtype(), c);
                  });
                  return std::vector<Tensor>{
                      ops::embedding_backward(g[0], ids, vocab_size, into.buffer, into.add)};
                })[0];
}

}  // namespace fg::ag
