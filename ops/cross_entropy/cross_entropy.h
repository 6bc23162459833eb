// Mean cross-entropy over the rows whose target is not kIgnoreIndex, with the
// softmax fused in: forward keeps only the per-row log-sum-exp, backward
// recomputes softmax from the logits.
#pragma once

#include "core/tensor.h"

namespace fg::ops {

constexpr int32_t kIgnoreIndex = -1;

struct CrossEntropyOut {
  Tensor loss;    // () f32 (f64 for f64 logits); 0 when every target is ignored
  Tensor lse;     // (N) log-sum-exp per row
  int64_t count;  // rows that count
};
// logits (N, V); targets i32 (N) in [0, V) or kIgnoreIndex
CrossEntropyOut cross_entropy_forward(const Tensor& logits, const Tensor& targets);
// dloss: the gradient of the (mean) loss -> dlogits (N, V) like logits
Tensor cross_entropy_backward(double dloss, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, int64_t count);

namespace detail {
// Checked, contiguous operands; outputs allocated by the caller (loss (), lse (N)
// in the loss dtype); forward returns the count. The CPU versions check the
// target range; on the GPU an out-of-range target makes its row's loss NaN.
int64_t cross_entropy_forward_cpu(const Tensor& logits, const Tensor& targets, const Tensor& loss,
                                  const Tensor& lse);
int64_t cross_entropy_forward_cuda(const Tensor& logits, const Tensor& targets, const Tensor& loss,
                                   const Tensor& lse);
void cross_entropy_backward_cpu(double dloss, const Tensor& logits, const Tensor& targets,
                                const Tensor& lse, int64_t count, const Tensor& dlogits);
void cross_entropy_backward_cuda(double dloss, const Tensor& logits, const Tensor& targets,
                                 const Tensor& lse, int64_t count, const Tensor& dlogits);
}  // namespace detail

}  // namespace fg::ops
