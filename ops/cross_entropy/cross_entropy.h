// Mean cross-entropy over the rows whose target is not kIgnoreIndex, with the
// softmax fused in: forward keeps only the per-row log-sum-exp, backward
// recomputes softmax from the logits. The count the mean divides by and the
// incoming gradient stay on the device: no host sync on the GPU, so a training
// step that uses them can be captured in a CUDA graph.
#pragma once

#include "core/tensor.h"

namespace fg::ops {

constexpr int32_t kIgnoreIndex = -1;

struct CrossEntropyOut {
  Tensor loss;   // () f32 (f64 for f64 logits): sum of the counted rows' losses / count;
                 // 0 when count is 0
  Tensor lse;    // (N) log-sum-exp per row, in the loss dtype
  Tensor count;  // () i32 on the logits' device: the count the mean divided by
};

// () i32 on the targets' device: the rows of targets (N) that are not kIgnoreIndex.
Tensor count_targets(const Tensor& targets);

// logits (N, V), rows contiguous; the row stride may exceed V (padded rows, as the LM
// head's are: lm_head_loss.h), other layouts are read through a contiguous copy.
// targets i32 (N) in [0, V) or kIgnoreIndex; rows whose target is
// kIgnoreIndex do not count. count: a () i32 tensor on the logits' device, the
// number of counted rows to divide by (a chunk of a larger batch passes the whole
// batch's count_targets); undefined: this call's own count_targets(targets).
CrossEntropyOut cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                      const Tensor& count = Tensor());
// dloss: () float tensor on the logits' device, the gradient of the loss; count as
// returned by (or given to) forward. -> dlogits (N, V) like logits:
// dloss / count * (softmax - onehot); zeros on ignored rows, and everywhere when
// count is 0.
Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, const Tensor& count);

// Forward and backward in one call, for a loss whose gradient dloss is known
// before the loss is (1 for a loss that is the root of backward): returns what
// forward returns and overwrites logits (rows contiguous) with dlogits, as backward
// computes them. On the GPU the logits cross device memory once each way
// instead of being read twice and written once.
CrossEntropyOut cross_entropy_with_grad(const Tensor& logits, const Tensor& targets,
                                        const Tensor& count, const Tensor& dloss);

namespace detail {
// The row stride of logits (or dlogits) as these functions take them: >= V; V for a
// single row, whose stride may be anything.
inline int64_t row_stride(const Tensor& logits) {
  return logits.size(0) <= 1 ? logits.size(1) : logits.strides()[0];
}

// Checked operands, contiguous but for the logits' (and dlogits') row stride, which may
// exceed V; outputs allocated by the caller: loss (), lse (N)
// in the loss dtype, count () i32, dloss () in the loss dtype. The CPU versions
// read count and dloss and check the target range; the CUDA kernels read them
// from device memory, and an out-of-range target makes its row's loss NaN.
void count_targets_cpu(const Tensor& targets, const Tensor& count);
void count_targets_cuda(const Tensor& targets, const Tensor& count);
void cross_entropy_forward_cpu(const Tensor& logits, const Tensor& targets, const Tensor& count,
                               const Tensor& loss, const Tensor& lse);
void cross_entropy_forward_cuda(const Tensor& logits, const Tensor& targets, const Tensor& count,
                                const Tensor& loss, const Tensor& lse);
void cross_entropy_backward_cpu(const Tensor& dloss, const Tensor& logits, const Tensor& targets,
                                const Tensor& lse, const Tensor& count, const Tensor& dlogits);
void cross_entropy_backward_cuda(const Tensor& dloss, const Tensor& logits, const Tensor& targets,
                                 const Tensor& lse, const Tensor& count, const Tensor& dlogits);
// loss () = the sum of row_loss (N) f32 / count (0 when count is 0), on the GPU.
void cross_entropy_mean_cuda(const Tensor& row_loss, const Tensor& count, const Tensor& loss);
// logits is overwritten with dlogits.
void cross_entropy_fused_cuda(const Tensor& logits, const Tensor& targets, const Tensor& count,
                              const Tensor& dloss, const Tensor& loss, const Tensor& lse);
}  // namespace detail

}  // namespace fg::ops
