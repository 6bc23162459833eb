// Causal scaled-dot-product attention with grouped-query heads: query head h
// reads key/value head h / (H / Hkv); scale 1 / sqrt(hd). Backward keeps the
// output and the per-row log-sum-exp and recomputes the probabilities.
#pragma once

#include <initializer_list>

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

// The gradients of attention(rope(q0), rope(k0), v) with respect to q0, k0 and v, from
// what forward kept (q and k are the rotated inputs it took), written into dqkv
// (B*T, (H + 2 Hkv) * hd) as the rows [dq0 | dk0 | dv]: the fused QKV layer's packed
// projection gradient (ops::rmsnorm_qkv_rope_backward_packed). positions, rotary_dim and
// theta as ops/rope takes them; rope_table: ops::rope_table of the positions, made here
// when undefined. On the GPU the flash kernels undo RoPE as they write (bf16, head_dim 64
// or 128, rotary_dim head_dim or head_dim / 2); otherwise attention_backward and one RoPE
// pass.
void attention_backward_into_qkv(const Tensor& dout, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& out, const Tensor& lse,
                                 const Tensor& positions, int64_t rotary_dim, double theta,
                                 const Tensor& dqkv, const Tensor& rope_table = Tensor());

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

// The CUDA entries above pick the flash kernels where they apply and the
// simple ones otherwise. The simple kernels (attention_cuda.cu: every dtype,
// head_dim up to 256, one warp per row) are also the flash kernels' reference.
void attention_forward_cuda_simple(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& out, const Tensor& lse);
void attention_backward_cuda_simple(const Tensor& dout, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& out, const Tensor& lse,
                                    const AttentionGrads& grads);

// Flash kernels (flash_attention_cuda.cu): bf16 with head_dim 64 or 128, tensor
// cores, f32 accumulation; dq goes through an f32 buffer with atomics. `variant`
// picks a tiling: 0 is the default, the benchmark times the others.
bool flash_attention_supported(const Tensor& q);  // bf16, head_dim 64 or 128
bool flash_attention_aligned(std::initializer_list<const Tensor*> operands);  // 16-byte starts
int flash_attention_variant_count(int head_dim, bool backward);
const char* flash_attention_variant_name(int head_dim, bool backward, int variant);
void flash_attention_forward_cuda(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, int variant = 0);
void flash_attention_backward_cuda(const Tensor& dout, const Tensor& q, const Tensor& k,
                                   const Tensor& v, const Tensor& out, const Tensor& lse,
                                   const AttentionGrads& grads, int variant = 0);
// attention_backward_into_qkv's flash path (`variant` as for flash_attention_backward_cuda);
// false, having done nothing, where it does not apply. Contiguous operands, positions and
// rope_table (made here when undefined) checked.
bool flash_attention_backward_into_qkv_cuda(const Tensor& dout, const Tensor& q, const Tensor& k,
                                            const Tensor& v, const Tensor& out, const Tensor& lse,
                                            const Tensor& positions, int64_t rotary_dim,
                                            double theta, const Tensor& dqkv,
                                            const Tensor& rope_table, int variant = 0);
}  // namespace detail

}  // namespace fg::ops
