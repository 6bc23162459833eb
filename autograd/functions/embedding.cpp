#include "autograd/functions/embedding.h"

#include "autograd/function.h"
#include "ops/embedding/embedding.h"

namespace fg::ag {

Variable embedding(const Variable& weight, const Tensor& ids) {
  Tensor out = ops::embedding_forward(weight.data(), ids);  // ids.shape + (D)
  int64_t vocab_size = weight.size(0);
  // Backward scatter-adds rows: it needs the ids and the vocab size, not the weight.
  return record("embedding", {weight}, {out}, [ids, vocab_size](const std::vector<Tensor>& g) {
    return std::vector<Tensor>{ops::embedding_backward(g[0], ids, vocab_size)};
  })[0];
}

}  // namespace fg::ag
