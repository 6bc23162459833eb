// The fused layer: h = x + residual; n = rmsnorm(h) * norm_weight;
// qkv = n @ wqkv^T (+ bias); q, k get RoPE. Columns of wqkv's output are
// [H*hd q | Hkv*hd k | Hkv*hd v], head-major. Backward keeps only h and the
// per-row rstd and recomputes n.
#pragma once

#include <optional>

#include "core/tensor.h"
#include "ops/gemm/gemm_hopper.h"

namespace fg::ops {

struct QKVRoPEConfig {
  int64_t hidden_dim = 0;    // D = num_heads * head_dim
  int64_t num_heads = 0;     // H
  int64_t num_kv_heads = 0;  // Hkv, H % Hkv == 0
  int64_t rotary_dim = 0;    // even, <= head_dim
  bool add_residual = true;
  bool use_bias = false;
  double eps = 1e-5;
  double rope_theta = 10000.0;

  int64_t head_dim() const { return hidden_dim / num_heads; }
  int64_t qkv_dim() const { return (num_heads + 2 * num_kv_heads) * head_dim(); }
  void validate() const;  // throws naming the bad field
};

struct QKVRoPEOut {
  Tensor q;     // (B, T, H, hd)
  Tensor k;     // (B, T, Hkv, hd)
  Tensor v;     // (B, T, Hkv, hd)
  Tensor h;     // (B, T, D): x + residual (x itself without residual)
  Tensor rstd;  // (B*T) f32 (f64 for f64 inputs)
};
// x (B, T, D); positions i32 (T) or (B, T); residual (B, T, D) when add_residual;
// norm_weight (D); wqkv (qkv_dim, D); bias (qkv_dim) when use_bias; rope_table: ops::rope_table
// of the positions (rope/rope.h), made here when undefined.
QKVRoPEOut rmsnorm_qkv_rope_forward(const QKVRoPEConfig& cfg, const Tensor& x,
                                    const Tensor& positions, const Tensor& residual,
                                    const Tensor& norm_weight, const Tensor& wqkv,
                                    const Tensor& bias, const Tensor& rope_table = Tensor());

struct QKVRoPEGrads {
  Tensor dx;            // (B, T, D), also the gradient of residual
  Tensor dnorm_weight;  // (D)
  Tensor dwqkv;         // (qkv_dim, D)
  Tensor dbias;         // (qkv_dim), undefined without bias
};
// dh (gradient reaching h from the residual stream) may be undefined.
// dwqkv_into, dwqkv_add: as linear_backward's dweight_into (ops/linear); dnorm_weight_into,
// dnorm_weight_add: as rmsnorm_backward's dweight_into (ops/rmsnorm).
QKVRoPEGrads rmsnorm_qkv_rope_backward(const QKVRoPEConfig& cfg, const Tensor& dq, const Tensor& dk,
                                       const Tensor& dv, const Tensor& dh, const Tensor& h,
                                       const Tensor& rstd, const Tensor& positions,
                                       const Tensor& norm_weight, const Tensor& wqkv,
                                       const Tensor& dwqkv_into = Tensor(), bool dwqkv_add = false,
                                       const Tensor& dnorm_weight_into = Tensor(),
                                       bool dnorm_weight_add = false);
// The same from the projection's gradient already packed: dqkv (B*T, qkv_dim), rows
// [dq | dk | dv] with RoPE undone (ops::attention_backward_into_qkv writes it so); the
// bias gradient is its column sums.
QKVRoPEGrads rmsnorm_qkv_rope_backward_packed(
    const QKVRoPEConfig& cfg, const Tensor& dqkv, const Tensor& dh, const Tensor& h,
    const Tensor& rstd, const Tensor& positions, const Tensor& norm_weight, const Tensor& wqkv,
    const Tensor& dwqkv_into = Tensor(), bool dwqkv_add = false,
    const Tensor& dnorm_weight_into = Tensor(), bool dnorm_weight_add = false);

namespace detail {
// The projection with bias and RoPE as one Hopper GEMM whose epilogue writes
// out.q, out.k and out.v, from n (B*T, D) contiguous and wqkv contiguous. Returns
// false, having done nothing, where it does not apply: not bf16, not a Hopper GPU
// with an sm_90a build, head_dim other than 64 or 128, rotary_dim other than
// head_dim or head_dim / 2, operands not 16-byte aligned. rope_table: as for
// rmsnorm_qkv_rope_forward. `schedule`: the GEMM's; by default ping-pong, the fastest at
// every hidden size measured (bench_fused_qkv times each).
bool qkv_rope_projection_cuda(const QKVRoPEConfig& cfg, const Tensor& n, const Tensor& wqkv,
                              const Tensor& bias, const Tensor& positions, const Tensor& rope_table,
                              int64_t T, const QKVRoPEOut& out,
                              std::optional<GemmSchedule> schedule = std::nullopt);
}  // namespace detail

}  // namespace fg::ops
