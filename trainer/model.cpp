#include "trainer/model.h"

#include <cmath>

#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "ops/rope/rope.h"

namespace fg::trainer {

using ag::Variable;

std::vector<ParamSpec> parameter_table(const GPTConfig& cfg) {
  using Init = ParamSpec::Init;
  const int64_t V = cfg.vocab_size, D = cfg.d_model, F = cfg.ff_dim(), Q = cfg.qkv_dim();
  std::vector<ParamSpec> t;
  t.push_back({"tok_embeddings.weight", {V, D}, Init::Normal, true});
  for (int64_t i = 0; i < cfg.n_layer; ++i) {
    std::string p = "layers." + std::to_string(i) + ".";
    t.push_back({p + "attn_norm.weight", {D}, Init::Ones, false});
    t.push_back({p + "attn.wqkv.weight", {Q, D}, Init::Normal, true});
    if (cfg.qkv_bias) t.push_back({p + "attn.wqkv.bias", {Q}, Init::Zeros, false});
    t.push_back({p + "attn.wo.weight", {D, D}, Init::ResidualNormal, true});
    t.push_back({p + "mlp_norm.weight", {D}, Init::Ones, false});
    t.push_back({p + "mlp.w_gate_up.weight", {2 * F, D}, Init::Normal, true});
    t.push_back({p + "mlp.w_down.weight", {D, F}, Init::ResidualNormal, true});
  }
  t.push_back({"norm.weight", {D}, Init::Ones, false});
  if (!cfg.tie_embeddings) t.push_back({"lm_head.weight", {V, D}, Init::Normal, true});
  return t;
}

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::None;
  if (name == "attn") return Recompute::Attn;
  if (name == "full") return Recompute::Full;
  FG_THROW("--recompute: expected none, attn or full, got '", name, "'");
}

GPT::GPT(const GPTConfig& cfg, uint64_t seed, Device device, DType dtype,
         std::optional<DType> compute_dtype)
    : cfg_(cfg),
      device_(device),
      dtype_(dtype),
      compute_dtype_(compute_dtype.value_or(dtype)),
      specs_(parameter_table(cfg)) {
  cfg_.validate();
  Generator gen(seed);
  const double std_residual = 0.02 / std::sqrt(2.0 * static_cast<double>(cfg.n_layer));
  // Drawn on the device itself (Philox is counter-based: the same numbers up to
  // the last ulp of libm), so a billion-parameter model starts in a second.
  for (const ParamSpec& s : specs_) {
    Tensor t;
    switch (s.init) {
      case ParamSpec::Init::Normal:
        t = Tensor::randn(s.shape, gen, DType::F32, device, 0.0, 0.02);
        break;
      case ParamSpec::Init::ResidualNormal:
        t = Tensor::randn(s.shape, gen, DType::F32, device, 0.0, std_residual);
        break;
      case ParamSpec::Init::Ones: t = Tensor::ones(s.shape, DType::F32, device); break;
      case ParamSpec::Init::Zeros: t = Tensor::zeros(s.shape, DType::F32, device); break;
    }
    params_.emplace_back(dtype == DType::F32 ? t : t.to(dtype), true);
  }
}

int64_t GPT::num_params() const {
  int64_t n = 0;
  for (const Variable& p : params_) n += p.data().numel();
  return n;
}

void GPT::zero_grad() const {
  for (const Variable& p : params_) const_cast<Variable&>(p).zero_grad();
}

std::vector<Tensor> GPT::make_compute_copies() const {
  std::vector<Tensor> copies;
  if (compute_dtype_ == dtype_) return copies;
  for (const Variable& p : params_) copies.push_back(p.data().to(compute_dtype_));
  return copies;
}

namespace {
// A parameter and, when there is one, its value in the compute dtype.
struct Param {
  Variable master;
  Tensor copy;
};

// The parameters of one layer, looked up by position in the table.
struct LayerParams {
  Param attn_norm, wqkv, bias, wo, mlp_norm, w_gate_up, w_down;
};
}  // namespace

GPT::Hidden GPT::forward(const std::vector<Variable>& p, const std::vector<Tensor>& copies,
                         const Tensor& idx_in, Recompute recompute) const {
  FG_CHECK(p.size() == specs_.size(), "GPT: ", p.size(), " parameters given, the table has ",
           specs_.size());
  FG_CHECK(copies.empty() || copies.size() == p.size(), "GPT: ", copies.size(),
           " compute copies for ", p.size(), " parameters");
  FG_CHECK(idx_in.dim() == 2, "GPT: idx must be (B, T), got ", idx_in.shape_str());
  const int64_t B = idx_in.size(0), T = idx_in.size(1), D = cfg_.d_model;
  FG_CHECK(T <= cfg_.max_seq_len, "GPT: sequence length ", T, " exceeds max_seq_len ",
           cfg_.max_seq_len);
  Tensor idx = idx_in.device() == device_ ? idx_in : idx_in.to(device_);
  Tensor positions = Tensor::arange(T, DType::I32, device_);
  // Every layer's projection and attention backward read the same RoPE table: made once
  // (the one-node layer below takes it; under --recompute attn each layer makes its own).
  const Tensor rope_table = recompute == Recompute::Attn
                                ? Tensor()
                                : ops::rope_table(positions, cfg_.rope_dim(), cfg_.rope_theta);

  ops::QKVRoPEConfig qcfg;
  qcfg.hidden_dim = D;
  qcfg.num_heads = cfg_.n_head;
  qcfg.num_kv_heads = cfg_.kv_heads();
  qcfg.rotary_dim = cfg_.rope_dim();
  qcfg.use_bias = cfg_.qkv_bias;
  qcfg.eps = cfg_.norm_eps;
  qcfg.rope_theta = cfg_.rope_theta;
  qcfg.add_residual = false;  // the stream arrives summed (see below)

  // Weights are cast where they are used, inside any recomputed region, so a
  // region never captures a node of the outer graph.
  const DType cd = compute_dtype_;
  auto use = [cd](const Param& w) {
    if (!w.master.defined()) return w.master;
    return w.copy.defined() ? ag::cast(w.master, w.copy) : ag::cast(w.master, cd);
  };

  size_t at = 0;
  auto next = [&]() {
    Param w{p[at], copies.empty() ? Tensor() : copies[at]};
    ++at;
    return w;
  };
  const Variable tok = use(next());
  // The residual stream h: each block's two products add their branch to it in their
  // epilogues (linear's residual) and each norm reads it once, passing it through.
  Variable h = ag::embedding(tok, idx);  // (B, T, D)
  for (int64_t i = 0; i < cfg_.n_layer; ++i) {
    LayerParams lp;
    lp.attn_norm = next();
    lp.wqkv = next();
    if (cfg_.qkv_bias) lp.bias = next();
    lp.wo = next();
    lp.mlp_norm = next();
    lp.w_gate_up = next();
    lp.w_down = next();

    // Captures by value: with --recompute full, backward runs this again after forward returned.
    auto layer = [=, this](const std::vector<Variable>& in) {
      // The attention core, then the output projection adding it to the stream, (B, T, D).
      // As a recomputed region's last product it records its node without computing its
      // output, which the region's first run made (ag::recomputing()).
      auto project = [=](const Variable& a, const Variable& stream, bool region_output) {
        const Variable x = ag::reshape(a, {B, T, D});
        if (region_output && ag::recomputing())
          return ag::record_linear(x, use(lp.wo), Variable(),
                                   Tensor::empty({B, T, D}, x.dtype(), x.device()), stream);
        return ag::linear(x, use(lp.wo), Variable(), stream);
      };
      Variable h_attn;
      if (recompute == Recompute::Attn) {
        // The core and the projection run again in backward, so the attention output
        // (which the projection would keep for dW) is not kept; q, k, v are, as the
        // region's inputs, and the stream it adds to.
        ag::QKVRoPEResult r = ag::rmsnorm_qkv_rope(qcfg, in[0], positions, Variable(),
                                                   use(lp.attn_norm), use(lp.wqkv), use(lp.bias));
        auto attend = [=](const std::vector<Variable>& a) {
          return std::vector<Variable>{project(ag::attention(a[0], a[1], a[2]), a[3], true)};
        };
        h_attn = ag::checkpoint(attend, {r.q, r.k, r.v, r.h})[0];
      } else {
        // One node: its backward writes the attention's gradients straight into the
        // projection's, RoPE undone on the way.
        ag::QKVAttentionResult r =
            ag::rmsnorm_qkv_rope_attention(qcfg, in[0], positions, Variable(), use(lp.attn_norm),
                                           use(lp.wqkv), use(lp.bias), rope_table);
        h_attn = project(r.out, r.h, false);
      }
      ag::AddRMSNormResult n2 =
          ag::add_rmsnorm(h_attn, Variable(), use(lp.mlp_norm), cfg_.norm_eps);
      // The layer's last product: under --recompute full, its output is the region's.
      const bool region_output = recompute == Recompute::Full && ag::recomputing();
      return std::vector<Variable>{
          ag::swiglu_mlp(n2.y, use(lp.w_gate_up), use(lp.w_down), n2.h, !region_output)};
    };
    h = recompute == Recompute::Full ? ag::checkpoint(layer, {h})[0] : layer({h})[0];
  }
  const Variable norm_w = use(next());
  const Variable head = cfg_.tie_embeddings ? tok : use(next());
  Variable y = ag::rmsnorm(h, norm_w, cfg_.norm_eps);
  return {ag::reshape(y, {B * T, D}), head};
}

Variable GPT::loss_with(const std::vector<Variable>& params, const Tensor& idx,
                        const Tensor& targets, Recompute recompute) const {
  return loss_from(params, {}, idx, targets, recompute);
}

Variable GPT::loss_from(const std::vector<Variable>& params, const std::vector<Tensor>& copies,
                        const Tensor& idx, const Tensor& targets, Recompute recompute) const {
  FG_CHECK(targets.shape() == idx.shape(), "GPT: targets are ", targets.shape_str(),
           " but idx is ", idx.shape_str());
  Hidden out = forward(params, copies, idx, recompute);
  // Logits are produced and consumed chunk by chunk, never all at once.
  const Tensor t = targets.device() == device_ ? targets : targets.to(device_);
  return ag::lm_head_loss(out.y, out.head, t.reshape({idx.numel()}));
}

Variable GPT::loss(const Tensor& idx, const Tensor& targets, Recompute recompute,
                   const std::vector<Tensor>& compute_copies) const {
  return loss_from(params_, compute_copies, idx, targets, recompute);
}

Tensor GPT::logits(const Tensor& idx) const {
  ag::NoGradGuard no_grad;
  Hidden out = forward(params_, {}, idx, Recompute::None);
  Tensor l = ag::linear(out.y, out.head).data();
  return l.view({idx.size(0), idx.size(1), cfg_.vocab_size});
}

}  // namespace fg::trainer
