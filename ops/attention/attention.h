// Causal scaled-dot-product attention with grouped-query heads: query head h
// reads key/value head h / (H / Hkv); scale 1 / sqrt(hd). Backward keeps the
// output and the per-row log-sum-exp and recomputes the probabilities.
#pragma once

#include "core/tensor.h"

namespace fg::ops {

struct AttentionOut {
  Tensor out;  // (B, T, H, hd)
  Tensor lse;  // (B, H, T) log-sum-exp of the scaled scores; f32 (f64 for f64 inputs)
};
// q (B, T, H, hd), k and v (B, T, Hkv, hd)
AttentionOut attention_forward(const Tensor& q, const Tensor& k, const Tensor& v);

struct AttentionGrads {
  Tensor dq, dk, dv;
};
AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& out, const Tensor& lse);

namespace detail {
// Checked, contiguous operands; outputs allocated by the caller (dk, dv zeroed
// by the kernel itself). bf16 on the CPU computes in f32.
void attention_forward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                           const Tensor& lse);
void attention_forward_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse);
void attention_backward_cpu(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& out, const Tensor& lse, const AttentionGrads& grads);
void attention_backward_cuda(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse, const AttentionGrads& grads);
}  // namespace detail

}  // namespace fg::ops
