// The fused residual add + RMSNorm + QKV projection + bias + RoPE layer as a
// module that owns its parameters. forward() saves only h and rstd.
#pragma once
#include "autograd/variable.h"
#include "ops/rmsnorm_qkv_rope/rmsnorm_qkv_rope.h"

namespace fg::ag {

struct QKVRoPEResult {
  Variable q;  // (B, T, H, hd)
  Variable k;  // (B, T, Hkv, hd)
  Variable v;  // (B, T, Hkv, hd)
  Variable h;  // (B, T, D), the new residual stream
};

// The op as a differentiable function; bias may be undefined when cfg.use_bias is false,
// residual when cfg.add_residual is false.
QKVRoPEResult rmsnorm_qkv_rope(const ops::QKVRoPEConfig& cfg, const Variable& x,
                               const Tensor& positions, const Variable& residual,
                               const Variable& norm_weight, const Variable& wqkv,
                               const Variable& bias);

// The layer and causal attention over its q, k and v as one differentiable function:
// out (B, T, H, hd) = attention(q, k, v), and h. One node, so that its backward can
// take the attention's gradients straight into the layer's packed projection gradient
// with RoPE undone on the way (ops::attention_backward_into_qkv) instead of a pass
// packing them. It saves what the two functions would: h, rstd, q, k, v, out and the
// log-sum-exp, and the positions' RoPE table (rope_table, ops::rope_table; made here when
// undefined) that its forward and backward both read.
struct QKVAttentionResult {
  Variable out;  // (B, T, H, hd)
  Variable h;    // (B, T, D)
};
QKVAttentionResult rmsnorm_qkv_rope_attention(const ops::QKVRoPEConfig& cfg, const Variable& x,
                                              const Tensor& positions, const Variable& residual,
                                              const Variable& norm_weight, const Variable& wqkv,
                                              const Variable& bias,
                                              const Tensor& rope_table = Tensor());

class FusedRMSNormQKVRoPE {
 public:
  // Parameters: norm weight 1, wqkv N(0, 0.02), bias 0, drawn from gen.
  FusedRMSNormQKVRoPE(int64_t hidden_dim, int64_t num_heads, int64_t num_kv_heads,
                      int64_t rotary_dim, bool add_residual, bool use_bias, double eps,
                      double rope_theta, Generator& gen, DType dtype = DType::F32,
                      Device device = Device::cpu());
  QKVRoPEResult forward(const Variable& x, const Tensor& positions,
                        const Variable& residual = Variable()) const;

  const ops::QKVRoPEConfig& config() const { return cfg_; }
  Variable norm_weight, wqkv, bias;

 private:
  ops::QKVRoPEConfig cfg_;
};

}  // namespace fg::ag
