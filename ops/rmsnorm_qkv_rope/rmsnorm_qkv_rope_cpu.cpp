// The fused residual add + RMSNorm + QKV projection + bias + RoPE layer: config
// validation, argument checks and the composition. Every step is a shared kernel
// that dispatches on the device (rmsnorm's rows, ops::gemm, rope's segments), so the
// same code is the CPU reference and the GPU path; no intermediate outlives a call.
//
// Passes over memory (what the GPU time beyond the GEMMs is made of):
//   forward:  [h, n, rstd] = add + rmsnorm(x, residual)        one pass
//             q|k rows = n @ Wqk^T + b, v = n @ Wv^T + b      cuBLASLt; v lands in place
//             q, k = rope(q|k rows)                             one pass over q|k only
//   backward: dqkv = [rope^-1(dq) | rope^-1(dk) | dv]          one pass, dbias on the way
//             (or given packed: attention_backward_into_qkv writes it, and dbias is one
//             column-sum pass)
//             dn = dqkv @ W                                     cuBLASLt
//             [dx, dg, n] = rmsnorm backward(dn, h) + dh        one pass, n rebuilt in it
//             dW = dqkv^T @ n                                   cuBLASLt
#include "ops/gemm/gemm.h"
#include "ops/linear/linear.h"
#include "ops/rmsnorm/rmsnorm.h"
#include "ops/rmsnorm_qkv_rope/rmsnorm_qkv_rope.h"
#include "ops/rope/rope.h"

namespace fg::ops {

void QKVRoPEConfig::validate() const {
  FG_CHECK(hidden_dim > 0, "QKVRoPEConfig: hidden_dim is ", hidden_dim, " but must be > 0");
  FG_CHECK(num_heads > 0, "QKVRoPEConfig: num_heads is ", num_heads, " but must be > 0");
  FG_CHECK(num_kv_heads > 0, "QKVRoPEConfig: num_kv_heads is ", num_kv_heads, " but must be > 0");
  FG_CHECK(hidden_dim % num_heads == 0, "QKVRoPEConfig: hidden_dim ", hidden_dim,
           " is not a multiple of num_heads ", num_heads);
  FG_CHECK(num_heads % num_kv_heads == 0, "QKVRoPEConfig: num_heads ", num_heads,
           " is not a multiple of num_kv_heads ", num_kv_heads);
  FG_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= head_dim(),
           "QKVRoPEConfig: rotary_dim is ", rotary_dim,
           " but must be even, positive and <= ", "head_dim ", head_dim());
  FG_CHECK(eps >= 0, "QKVRoPEConfig: eps is ", eps, " but must be >= 0");
  FG_CHECK(rope_theta > 0, "QKVRoPEConfig: rope_theta is ", rope_theta, " but must be > 0");
}

namespace {

constexpr const char* kOp = "rmsnorm_qkv_rope";
constexpr const char* kBackwardOp = "rmsnorm_qkv_rope_backward";

// What forward and backward share: the activation x (forward) or h (backward), a float
// (B, T, D); norm_weight (D) and wqkv (qkv_dim, D) of its dtype and device; positions.
void check_common(const char* op, const QKVRoPEConfig& cfg, const char* act_name, const Tensor& act,
                  const Tensor& positions, const Tensor& norm_weight, const Tensor& wqkv) {
  check_defined(op, act_name, act);
  FG_CHECK(act.dim() == 3 && act.size(2) == cfg.hidden_dim, op, ": ", act_name, " is ",
           act.shape_str(), " but expected (B, T, ", cfg.hidden_dim, ")");
  FG_CHECK(act.dtype() != DType::I32, op, ": ", act_name, " is i32 but must be a float tensor");
  check_shape(op, "norm_weight", norm_weight, {cfg.hidden_dim});
  check_dtype(op, "norm_weight", norm_weight, act.dtype());
  check_same_device(op, "norm_weight", norm_weight, act_name, act);
  check_shape(op, "wqkv", wqkv, {cfg.qkv_dim(), cfg.hidden_dim});
  check_dtype(op, "wqkv", wqkv, act.dtype());
  check_same_device(op, "wqkv", wqkv, act_name, act);
  detail::check_positions(op, positions, act.size(0), act.size(1), act.device());
}

// The q, k and v column blocks of qkv rows (B*T, qkv_dim) as (B, T, heads, hd) views.
struct QKVViews {
  Tensor q, k, v;
};
QKVViews split_qkv(const QKVRoPEConfig& cfg, const Tensor& qkv, int64_t B, int64_t T) {
  const int64_t H = cfg.num_heads, Hkv = cfg.num_kv_heads;
  Tensor heads = qkv.view({B, T, H + 2 * Hkv, cfg.head_dim()});
  return {heads.slice(2, 0, H), heads.slice(2, H, H + Hkv), heads.slice(2, H + Hkv, H + 2 * Hkv)};
}

}  // namespace

QKVRoPEOut rmsnorm_qkv_rope_forward(const QKVRoPEConfig& cfg, const Tensor& x,
                                    const Tensor& positions, const Tensor& residual,
                                    const Tensor& norm_weight, const Tensor& wqkv,
                                    const Tensor& bias, const Tensor& rope_table) {
  cfg.validate();
  check_common(kOp, cfg, "x", x, positions, norm_weight, wqkv);
  detail::check_rope_table(kOp, rope_table, positions, cfg.rotary_dim);
  if (cfg.add_residual) {
    detail::check_like(kOp, "residual", residual, "x", x);
  } else {
    FG_CHECK(!residual.defined(), kOp, ": residual ", residual.shape_str(),
             " was given but add_residual is false");
  }
  if (cfg.use_bias) {
    check_shape(kOp, "bias", bias, {cfg.qkv_dim()});
    check_dtype(kOp, "bias", bias, x.dtype());
    check_same_device(kOp, "bias", bias, "x", x);
  } else {
    FG_CHECK(!bias.defined(), kOp, ": bias ", bias.shape_str(), " was given but use_bias is false");
  }
  const int64_t B = x.size(0), T = x.size(1), D = cfg.hidden_dim, rows = B * T;
  const DType dt = x.dtype();
  const Device dev = x.device();

  const int64_t H = cfg.num_heads, Hkv = cfg.num_kv_heads, hd = cfg.head_dim();
  const int64_t qk_dim = (H + Hkv) * hd, qkv_dim = cfg.qkv_dim();

  // h = x (+ residual), n = rmsnorm(h) * norm_weight; without a residual h is x itself.
  Tensor xc = x.contiguous();
  QKVRoPEOut out;
  out.h = cfg.add_residual ? Tensor::empty(x.shape(), dt, dev) : xc;
  out.rstd = Tensor::empty({rows}, detail::rmsnorm_stat_dtype(dt), dev);
  Tensor n = Tensor::empty({rows, D}, dt, dev);  // (B*T, D), dropped on return
  detail::rmsnorm_rows_forward(xc, cfg.add_residual ? residual.contiguous() : Tensor(),
                               norm_weight.contiguous(), cfg.eps,
                               cfg.add_residual ? out.h : Tensor(), n, out.rstd);

  Tensor w = wqkv.contiguous(), b = cfg.use_bias ? bias.contiguous() : Tensor();
  out.q = Tensor::empty({B, T, H, hd}, dt, dev);
  out.k = Tensor::empty({B, T, Hkv, hd}, dt, dev);
  out.v = Tensor::empty({B, T, Hkv, hd}, dt, dev);
#ifdef FG_CUDA
  // On Hopper: one GEMM whose epilogue adds the bias, rotates and writes q, k, v.
  if (dev.is_cuda() &&
      detail::qkv_rope_projection_cuda(cfg, n, w, b, positions.contiguous(), rope_table, T, out))
    return out;
#endif

  // Otherwise the projection in two products over the rows of wqkv: q|k rows
  // (B*T, (H + Hkv) hd), dropped on return, and v written straight into its output.
  auto bias_of = [&](int64_t from, int64_t to) { return b.defined() ? b.slice(0, from, to) : b; };
  Tensor qk = Tensor::empty({rows, qk_dim}, dt, dev);
  gemm(n, false, w.slice(0, 0, qk_dim), true, qk, 1.0, 0.0, bias_of(0, qk_dim));
  gemm(n, false, w.slice(0, qk_dim, qkv_dim), true, out.v.view({rows, Hkv * hd}), 1.0, 0.0,
       bias_of(qk_dim, qkv_dim));

  // One segment pass rotates the q|k rows into q and k.
  Tensor heads = qk.view({B, T, H + Hkv, hd});
  detail::rope_segments(
      {{heads.slice(2, 0, H), out.q, true}, {heads.slice(2, H, H + Hkv), out.k, true}},
      positions.contiguous(), cfg.rotary_dim, cfg.rope_theta, false);
  return out;
}

namespace {

// Checks what both backward entries take besides the head gradients.
void check_backward(const char* op, const QKVRoPEConfig& cfg, const Tensor& dh, const Tensor& h,
                    const Tensor& rstd, const Tensor& positions, const Tensor& norm_weight,
                    const Tensor& wqkv) {
  cfg.validate();
  check_common(op, cfg, "h", h, positions, norm_weight, wqkv);
  if (dh.defined()) detail::check_like(op, "dh", dh, "h", h);
  detail::check_rstd(op, rstd, "h", h);
}

// From dqkv on: dn = dqkv @ W, then through the norm, plus the gradient reaching h
// directly. That pass reads h anyway, so it also rebuilds n = h * rstd * norm_weight
// (B*T, D), bit for bit as forward made it, for dW = dqkv^T @ n. grads.dbias is set
// by the caller.
void backward_from_dqkv(const char* op, const QKVRoPEConfig& cfg, const Tensor& dqkv,
                        const Tensor& dh, const Tensor& h, const Tensor& rstd,
                        const Tensor& norm_weight, const Tensor& wqkv, const Tensor& dwqkv_into,
                        bool dwqkv_add, const Tensor& dnorm_weight_into, bool dnorm_weight_add,
                        QKVRoPEGrads& grads) {
  const int64_t rows = h.size(0) * h.size(1), D = cfg.hidden_dim;
  const DType dt = h.dtype();
  const Device dev = h.device();
  Tensor hc = h.contiguous(), wn = norm_weight.contiguous(), w = wqkv.contiguous();
  Tensor rstdc = rstd.contiguous();
  Tensor dn = Tensor::empty({rows, D}, dt, dev), n = Tensor::empty({rows, D}, dt, dev);
  gemm(dqkv, false, w, false, dn);
  grads.dx = Tensor::empty(h.shape(), dt, dev);
  grads.dnorm_weight = detail::dweight_buffer(op, dnorm_weight_into, hc, wn);
  detail::rmsnorm_rows_backward(dn, dh.defined() ? dh.contiguous() : Tensor(), hc, wn, rstdc,
                                grads.dx, grads.dnorm_weight, n,
                                dnorm_weight_into.defined() && dnorm_weight_add);
  if (dwqkv_into.defined()) {  // a parameter's gradient: the product may wait in a GemmBatch
    check_shape(op, "dwqkv_into", dwqkv_into, wqkv.shape());
    FG_CHECK(dwqkv_into.is_contiguous(), op, ": dwqkv_into ", dwqkv_into.shape_str(),
             " is not contiguous");
    grads.dwqkv = dwqkv_into;
    gemm_batchable(dqkv, true, n, false, grads.dwqkv, 1.0, dwqkv_add ? 1.0 : 0.0);
  } else {
    grads.dwqkv = Tensor::empty({cfg.qkv_dim(), D}, dt, dev);
    gemm(dqkv, true, n, false, grads.dwqkv);
  }
}

}  // namespace

QKVRoPEGrads rmsnorm_qkv_rope_backward(const QKVRoPEConfig& cfg, const Tensor& dq, const Tensor& dk,
                                       const Tensor& dv, const Tensor& dh, const Tensor& h,
                                       const Tensor& rstd, const Tensor& positions,
                                       const Tensor& norm_weight, const Tensor& wqkv,
                                       const Tensor& dwqkv_into, bool dwqkv_add,
                                       const Tensor& dnorm_weight_into, bool dnorm_weight_add) {
  check_backward(kBackwardOp, cfg, dh, h, rstd, positions, norm_weight, wqkv);
  const int64_t B = h.size(0), T = h.size(1);
  const DType dt = h.dtype();
  const Device dev = h.device();
  auto check_head_grad = [&](const char* name, const Tensor& g, int64_t heads) {
    check_shape(kBackwardOp, name, g, {B, T, heads, cfg.head_dim()});
    check_dtype(kBackwardOp, name, g, dt);
    check_same_device(kBackwardOp, name, g, "h", h);
  };
  check_head_grad("dq", dq, cfg.num_heads);
  check_head_grad("dk", dk, cfg.num_kv_heads);
  check_head_grad("dv", dv, cfg.num_kv_heads);

  // One pass: inverse RoPE on dq and dk, dv copied, packed into dqkv rows
  // (B*T, qkv_dim); the bias gradient (the column sums of dqkv) on the way.
  QKVRoPEGrads grads;
  if (cfg.use_bias) grads.dbias = Tensor::empty({cfg.qkv_dim()}, dt, dev);
  Tensor dqkv = Tensor::empty({B * T, cfg.qkv_dim()}, dt, dev);
  QKVViews parts = split_qkv(cfg, dqkv, B, T);
  detail::rope_segments({{dq.contiguous(), parts.q, true},
                         {dk.contiguous(), parts.k, true},
                         {dv.contiguous(), parts.v, false}},
                        positions.contiguous(), cfg.rotary_dim, cfg.rope_theta, true,
                        {grads.dbias});
  backward_from_dqkv(kBackwardOp, cfg, dqkv, dh, h, rstd, norm_weight, wqkv, dwqkv_into, dwqkv_add,
                     dnorm_weight_into, dnorm_weight_add, grads);
  return grads;
}

QKVRoPEGrads rmsnorm_qkv_rope_backward_packed(const QKVRoPEConfig& cfg, const Tensor& dqkv,
                                              const Tensor& dh, const Tensor& h, const Tensor& rstd,
                                              const Tensor& positions, const Tensor& norm_weight,
                                              const Tensor& wqkv, const Tensor& dwqkv_into,
                                              bool dwqkv_add, const Tensor& dnorm_weight_into,
                                              bool dnorm_weight_add) {
  const char* op = "rmsnorm_qkv_rope_backward_packed";
  check_backward(op, cfg, dh, h, rstd, positions, norm_weight, wqkv);
  check_shape(op, "dqkv", dqkv, {h.size(0) * h.size(1), cfg.qkv_dim()});
  check_dtype(op, "dqkv", dqkv, h.dtype());
  check_same_device(op, "dqkv", dqkv, "h", h);
  QKVRoPEGrads grads;
  const Tensor dqkvc = dqkv.contiguous();
  if (cfg.use_bias) grads.dbias = column_sums(dqkvc);
  backward_from_dqkv(op, cfg, dqkvc, dh, h, rstd, norm_weight, wqkv, dwqkv_into, dwqkv_add,
                     dnorm_weight_into, dnorm_weight_add, grads);
  return grads;
}

}  // namespace fg::ops
