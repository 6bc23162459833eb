// The LM head fused with the mean cross-entropy, chunked over rows: each chunk's
// logits are produced (ops::gemm), turned into the loss and, in place, dlogits
// (ops::cross_entropy_with_grad: one pass over them) and consumed into dy and dweight at once, so
// neither the (N, V) logits nor their gradient ever exist in full. The same code
// runs on every device: it only composes ops, and reads nothing back to the host
// (no sync on the GPU: it can be captured in a CUDA graph).
#pragma once

#include "core/tensor.h"

namespace fg::ops {

struct LMHeadLossOut {
  Tensor loss;     // () f32 (f64 for f64 inputs): mean over rows whose target is not -1
  Tensor dy;       // (N, D) gradient of the loss, when grads were asked for
  Tensor dweight;  // (V, D)
  Tensor count;    // () i32 on the inputs' device: the rows whose target is not -1
};

// y (N, D), weight (V, D), targets i32 (N). chunk_rows 0 picks the fewest
// chunks of at most kLMHeadChunkElements logits (1 GiB in bf16), but at least two
// (the whole batch's logits never exist at once), all of one size: each chunk's
// three GEMMs run faster with more rows (GPT-2-small on an H200: 4 chunks of 4096
// rows instead of 13 of 1334 took 0.7 ms less per step, 2 of 8192 another ~0.1 ms;
// the peak without recomputation stayed 9.47 GiB, with --recompute full it rose
// 3.55 -> 3.91 GiB).
constexpr int64_t kLMHeadChunkElements = int64_t{1} << 29;
LMHeadLossOut lm_head_loss(const Tensor& y, const Tensor& weight, const Tensor& targets,
                           bool need_grads, int64_t chunk_rows = 0);

}  // namespace fg::ops
