#include "autograd/functions/rmsnorm_qkv_rope.h"

#include "autograd/function.h"
#include "autograd/functions/rmsnorm.h"
#include "ops/attention/attention.h"
#include "ops/gemm/gemm.h"
#include "ops/rope/rope.h"

namespace fg::ag {

namespace {

Tensor data_of(const Variable& v) {
  return v.defined() ? v.data() : Tensor();
}

// The layer's forward on the variables' data, for both functions below.
ops::QKVRoPEOut layer_forward(const ops::QKVRoPEConfig& cfg, const Variable& x,
                              const Tensor& positions, const Variable& residual,
                              const Variable& norm_weight, const Variable& wqkv,
                              const Variable& bias, const Tensor& rope_table = Tensor()) {
  return ops::rmsnorm_qkv_rope_forward(cfg, x.data(), positions, data_of(residual),
                                       norm_weight.data(), wqkv.data(), data_of(bias), rope_table);
}

// A projection cast from a parameter (master = cast_source(wqkv)) records the parameter
// as its input, and dwqkv goes straight into the parameter's gradient buffer
// (autograd/function.h).
const Variable& projection_input(const Variable& master, const Variable& wqkv) {
  return master.defined() ? master : wqkv;
}
GradBuffer projection_buffer(const Variable& master, const Tensor& h) {
  return leaf_grad_buffer(master,
                          [&](DType c) { return ops::gemm_accepts(h.dtype(), c, h.device()); });
}

// The buffers the backward writes straight into: the projection's and the norm weight's
// parameters' gradients (where they are casts of parameters).
struct LayerBuffers {
  GradBuffer wqkv, norm_weight;
};
LayerBuffers layer_buffers(const Variable& wqkv_master, const Variable& norm_master,
                           const Tensor& h) {
  return {projection_buffer(wqkv_master, h), detail::norm_weight_buffer(norm_master, h)};
}

std::vector<Tensor> input_grads(const ops::QKVRoPEConfig& cfg, const ops::QKVRoPEGrads& d) {
  return {d.dx, cfg.add_residual ? d.dx : Tensor(), d.dnorm_weight, d.dwqkv, d.dbias};
}

}  // namespace

QKVRoPEResult rmsnorm_qkv_rope(const ops::QKVRoPEConfig& cfg, const Variable& x,
                               const Tensor& positions, const Variable& residual,
                               const Variable& norm_weight, const Variable& wqkv,
                               const Variable& bias) {
  const ops::QKVRoPEOut out = layer_forward(cfg, x, positions, residual, norm_weight, wqkv, bias);
  // Saved for backward: h (an output anyway) and rstd, besides the parameters and
  // positions. The normalized rows and qkv are recomputed, never kept.
  const Variable master = cast_source(wqkv), norm_master = cast_source(norm_weight);
  std::vector<Variable> r = record(
      "rmsnorm_qkv_rope",
      {x, residual, detail::norm_weight_input(norm_master, norm_weight),
       projection_input(master, wqkv), bias},
      {out.q, out.k, out.v, out.h},
      [cfg, h = out.h, rstd = out.rstd, positions, wn = norm_weight.data(), w = wqkv.data(), master,
       norm_master](const std::vector<Tensor>& g) {
        const LayerBuffers into = layer_buffers(master, norm_master, h);
        return input_grads(
            cfg, ops::rmsnorm_qkv_rope_backward(cfg, g[0], g[1], g[2], g[3], h, rstd, positions, wn,
                                                w, into.wqkv.buffer, into.wqkv.add,
                                                into.norm_weight.buffer, into.norm_weight.add));
      });
  return {r[0], r[1], r[2], r[3]};
}

QKVAttentionResult rmsnorm_qkv_rope_attention(const ops::QKVRoPEConfig& cfg, const Variable& x,
                                              const Tensor& positions, const Variable& residual,
                                              const Variable& norm_weight, const Variable& wqkv,
                                              const Variable& bias, const Tensor& rope_table) {
  const Tensor table = rope_table.defined()
                           ? rope_table
                           : ops::rope_table(positions, cfg.rotary_dim, cfg.rope_theta);
  const ops::QKVRoPEOut qkv =
      layer_forward(cfg, x, positions, residual, norm_weight, wqkv, bias, table);
  ops::AttentionOut a = ops::attention_forward(qkv.q, qkv.k, qkv.v);
  const Variable master = cast_source(wqkv), norm_master = cast_source(norm_weight);
  std::vector<Variable> r = record(
      "rmsnorm_qkv_rope_attention",
      {x, residual, detail::norm_weight_input(norm_master, norm_weight),
       projection_input(master, wqkv), bias},
      {a.out, qkv.h},
      [cfg, qkv, a, positions, table, wn = norm_weight.data(), w = wqkv.data(), master,
       norm_master](const std::vector<Tensor>& g) {
        const Tensor& h = qkv.h;
        Tensor dqkv = Tensor::empty({h.size(0) * h.size(1), cfg.qkv_dim()}, h.dtype(), h.device());
        ops::attention_backward_into_qkv(g[0], qkv.q, qkv.k, qkv.v, a.out, a.lse, positions,
                                         cfg.rotary_dim, cfg.rope_theta, dqkv, table);
        const LayerBuffers into = layer_buffers(master, norm_master, h);
        return input_grads(cfg,
                           ops::rmsnorm_qkv_rope_backward_packed(
                               cfg, dqkv, g[1], h, qkv.rstd, positions, wn, w, into.wqkv.buffer,
                               into.wqkv.add, into.norm_weight.buffer, into.norm_weight.add));
      });
  return {r[0], r[1]};
}

FusedRMSNormQKVRoPE::FusedRMSNormQKVRoPE(int64_t hidden_dim, int64_t num_heads,
                                         int64_t num_kv_heads, int64_t rotary_dim,
                                         bool add_residual, bool use_bias, double eps,
                                         double rope_theta, Generator& gen, DType dtype,
                                         Device device) {
  cfg_.hidden_dim = hidden_dim;
  cfg_.num_heads = num_heads;
  cfg_.num_kv_heads = num_kv_heads;
  cfg_.rotary_dim = rotary_dim;
  cfg_.add_residual = add_residual;
  cfg_.use_bias = use_bias;
  cfg_.eps = eps;
  cfg_.rope_theta = rope_theta;
  cfg_.validate();
  norm_weight = Variable(Tensor::ones({hidden_dim}, dtype, device), true);
  wqkv = Variable(Tensor::randn({cfg_.qkv_dim(), hidden_dim}, gen, dtype, device, 0.0, 0.02), true);
  if (use_bias) bias = Variable(Tensor::zeros({cfg_.qkv_dim()}, dtype, device), true);
}

QKVRoPEResult FusedRMSNormQKVRoPE::forward(const Variable& x, const Tensor& positions,
                                           const Variable& residual) const {
  return rmsnorm_qkv_rope(cfg_, x, positions, residual, norm_weight, wqkv, bias);
}

}  // namespace fg::ag
