// The LM head fused with the mean cross-entropy, chunked over rows: each chunk's
// logits are produced (ops::gemm), turned into the loss and, in place, dlogits
// (ops::cross_entropy_with_grad: one pass over them) and consumed into dy and dweight at once, so
// neither the (N, V) logits nor their gradient ever exist in full. On Hopper (bf16) the pass
// is gone: the product's epilogue writes exp(logit - shift) and row sums instead of the
// logits (detail::lm_head_exp_chunk_cuda). Nothing is read back to the host (no sync on the
// GPU: it can be captured in a CUDA graph).
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

namespace detail {
// The chunk's path on Hopper for bf16 (lm_head_loss_cuda.cu): the loss inside the logits'
// product. Whether it applies: y (N, D) and the padded weight (Vp, D) bf16 on a Hopper GPU
// with an sm_90a build, D and Vp multiples of 8, both 16-byte aligned.
bool lm_head_exp_applies(const Tensor& y, const Tensor& w);
// Vocabularies from which lm_head_loss takes that path: below, the (rows, V) pass it saves
// costs less than the small kernels it adds (the baby model, V = 65: +0.03 ms a step).
constexpr int64_t kLossInEpilogueMinVocab = 4096;
// For rows y (n, D) of the chunk and targets (n): writes e (n, Vp) = exp(logit - the row's
// target logit) (0 past vocab) and returns the chunk's share of the mean loss (() f32, over
// count). With dloss (() f32), e's target entries are lowered so that dlogits = scale[row] *
// e, and scale (n) f32 is written (0 on ignored rows, whose e rows are zeroed).
Tensor lm_head_exp_chunk_cuda(const Tensor& y, const Tensor& w, int64_t vocab,
                              const Tensor& targets, const Tensor& count, const Tensor& dloss,
                              const Tensor& e, const Tensor& scale);
// out (rows, d) = bf16(x * s[row]); out may be x. bf16, rows contiguous, d a multiple of 8.
void scale_rows_cuda(const Tensor& x, const Tensor& s, const Tensor& out);
}  // namespace detail

}  // namespace fg::ops
