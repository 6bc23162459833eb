// rmsnorm_qkv_rope: forward and backward equal the unfused composition (add_rmsnorm,
// gemm, rope), the forward keeps nothing but its outputs, config and argument errors
// name the bad field; the module and its autograd node (keeps only h and rstd);
// CUDA against the CPU in f32 and bf16 with NaN-poisoned memory.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "ops/add/add.h"
#include "ops/add_rmsnorm/add_rmsnorm.h"
#include "ops/gemm/gemm.h"
#include "ops/gemm/gemm_hopper.h"
#include "ops/rmsnorm/rmsnorm.h"
#include "ops/rmsnorm_qkv_rope/rmsnorm_qkv_rope.h"
#include "ops/rope/rope.h"
#include "test_util.h"

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;
using fg::ops::QKVRoPEConfig;
using fg::ops::rmsnorm_qkv_rope_backward;
using fg::ops::rmsnorm_qkv_rope_forward;

namespace {

struct FusedCase {
  int64_t B, T, H, Hkv, hd, rotary;
  bool residual, bias, per_batch;
  int32_t offset;
};

std::string case_name(const ::testing::TestParamInfo<FusedCase>& info) {
  const FusedCase& c = info.param;
  return "B" + std::to_string(c.B) + "_T" + std::to_string(c.T) + "_H" + std::to_string(c.H) +
         "_Hkv" + std::to_string(c.Hkv) + "_hd" + std::to_string(c.hd) + "_r" +
         std::to_string(c.rotary) + (c.residual ? "_res" : "") + (c.bias ? "_bias" : "") +
         (c.per_batch ? "_perbatch" : "") + "_pos" + std::to_string(c.offset);
}

QKVRoPEConfig config_of(const FusedCase& c) {
  QKVRoPEConfig cfg;
  cfg.hidden_dim = c.H * c.hd;
  cfg.num_heads = c.H;
  cfg.num_kv_heads = c.Hkv;
  cfg.rotary_dim = c.rotary;
  cfg.add_residual = c.residual;
  cfg.use_bias = c.bias;
  return cfg;
}

Tensor positions_of(const FusedCase& c, Device device) {
  std::vector<int32_t> p;
  for (int64_t b = 0; b < (c.per_batch ? c.B : 1); ++b)
    for (int64_t t = 0; t < c.T; ++t) p.push_back(c.offset + static_cast<int32_t>(11 * b + t));
  return c.per_batch ? Tensor::from_ints(p, {c.B, c.T}, device)
                     : Tensor::from_ints(p, {c.T}, device);
}

// Every input of one call, drawn in `dtype` on `device` (undefined where the config has none).
struct FusedInputs {
  Tensor x, residual, norm_weight, wqkv, bias, positions;
  Tensor dq, dk, dv, dh;
};
FusedInputs make_inputs(const FusedCase& c, DType dtype, Device device, uint64_t seed) {
  QKVRoPEConfig cfg = config_of(c);
  const int64_t D = cfg.hidden_dim;
  Generator gen(seed);
  FusedInputs in;
  in.x = Tensor::randn({c.B, c.T, D}, gen, dtype, device);
  if (c.residual) in.residual = Tensor::randn({c.B, c.T, D}, gen, dtype, device);
  in.norm_weight = Tensor::uniform({D}, gen, 0.5, 1.5, dtype, device);
  in.wqkv = Tensor::randn({cfg.qkv_dim(), D}, gen, dtype, device, 0.0, 0.1);
  if (c.bias) in.bias = Tensor::randn({cfg.qkv_dim()}, gen, dtype, device);
  in.positions = positions_of(c, device);
  in.dq = Tensor::randn({c.B, c.T, c.H, c.hd}, gen, dtype, device);
  in.dk = Tensor::randn({c.B, c.T, c.Hkv, c.hd}, gen, dtype, device);
  in.dv = Tensor::randn({c.B, c.T, c.Hkv, c.hd}, gen, dtype, device);
  in.dh = Tensor::randn({c.B, c.T, D}, gen, dtype, device);
  return in;
}

// ---------------------------------------------------------------------------
// CPU: the fused op against add_rmsnorm + gemm + rope composed by hand.

const std::vector<FusedCase> kCpuCases = {
    {2, 5, 3, 1, 6, 4, true, true, false, 7},     // GQA, partial rotary, offset, bias
    {3, 4, 1, 1, 10, 10, false, false, true, 0},  // no residual, no bias, per-batch positions
    {2, 3, 5, 1, 2, 2, true, false, false, 7},    // head_dim 2
    {1, 7, 2, 2, 14, 6, false, true, true, 100},  // MHA, partial rotary, per-batch
};

struct Composed {
  Tensor q, k, v, h, rstd, n;
};
Composed compose_forward(const QKVRoPEConfig& cfg, const FusedInputs& in) {
  const int64_t B = in.x.size(0), T = in.x.size(1), D = cfg.hidden_dim, hd = cfg.head_dim();
  const int64_t H = cfg.num_heads, Hkv = cfg.num_kv_heads;
  Composed r;
  if (cfg.add_residual) {
    fg::ops::AddRMSNormOut o =
        fg::ops::add_rmsnorm_forward(in.x, in.residual, in.norm_weight, cfg.eps);
    r.h = o.h, r.rstd = o.rstd, r.n = o.y;
  } else {
    fg::ops::RMSNormOut o = fg::ops::rmsnorm_forward(in.x, in.norm_weight, cfg.eps);
    r.h = in.x, r.rstd = o.rstd, r.n = o.y;
  }
  Tensor qkv = Tensor::empty({B * T, cfg.qkv_dim()}, in.x.dtype());
  fg::ops::gemm(r.n.view({B * T, D}), false, in.wqkv, true, qkv, 1.0, 0.0, in.bias);
  Tensor heads = qkv.view({B, T, H + 2 * Hkv, hd});
  r.q = fg::ops::rope_forward(heads.slice(2, 0, H), in.positions, cfg.rotary_dim, cfg.rope_theta);
  r.k = fg::ops::rope_forward(heads.slice(2, H, H + Hkv), in.positions, cfg.rotary_dim,
                              cfg.rope_theta);
  r.v = heads.slice(2, H + Hkv, H + 2 * Hkv).contiguous();
  return r;
}

TEST(RMSNormQKVRoPE, ForwardEqualsComposition) {
  for (const FusedCase& c : kCpuCases) {
    QKVRoPEConfig cfg = config_of(c);
    FusedInputs in = make_inputs(c, DType::F64, Device::cpu(), 1 + c.hd);
    fg::ops::QKVRoPEOut out = rmsnorm_qkv_rope_forward(cfg, in.x, in.positions, in.residual,
                                                       in.norm_weight, in.wqkv, in.bias);
    Composed ref = compose_forward(cfg, in);
    EXPECT_EQ(out.q.shape(), (Shape{c.B, c.T, c.H, c.hd}));
    EXPECT_EQ(out.k.shape(), (Shape{c.B, c.T, c.Hkv, c.hd}));
    EXPECT_EQ(out.v.shape(), (Shape{c.B, c.T, c.Hkv, c.hd}));
    EXPECT_EQ(out.rstd.shape(), (Shape{c.B * c.T}));
    EXPECT_EQ(fg::max_abs_diff(out.q, ref.q), 0.0);
    EXPECT_EQ(fg::max_abs_diff(out.k, ref.k), 0.0);
    EXPECT_EQ(fg::max_abs_diff(out.v, ref.v), 0.0);
    EXPECT_EQ(fg::max_abs_diff(out.h, ref.h), 0.0);
    EXPECT_EQ(fg::max_abs_diff(out.rstd, ref.rstd), 0.0);
  }
}

TEST(RMSNormQKVRoPE, BackwardEqualsComposition) {
  for (const FusedCase& c : kCpuCases) {
    QKVRoPEConfig cfg = config_of(c);
    const int64_t B = c.B, T = c.T, D = cfg.hidden_dim, H = c.H, Hkv = c.Hkv;
    FusedInputs in = make_inputs(c, DType::F64, Device::cpu(), 2 + c.hd);
    Composed fwd = compose_forward(cfg, in);
    // By hand: inverse rope into dqkv rows, then the projection and the norm.
    Tensor dqkv = Tensor::empty({B * T, cfg.qkv_dim()}, DType::F64);
    Tensor heads = dqkv.view({B, T, H + 2 * Hkv, c.hd});
    heads.slice(2, 0, H).copy_(
        fg::ops::rope_backward(in.dq, in.positions, c.rotary, cfg.rope_theta));
    heads.slice(2, H, H + Hkv)
        .copy_(fg::ops::rope_backward(in.dk, in.positions, c.rotary, cfg.rope_theta));
    heads.slice(2, H + Hkv, H + 2 * Hkv).copy_(in.dv);
    Tensor dw_ref = fg::ops::matmul(dqkv, true, fwd.n.view({B * T, D}), false);
    Tensor dn = fg::ops::matmul(dqkv, false, in.wqkv, false).view({B, T, D});
    for (bool with_dh : {false, true}) {
      Tensor dh = with_dh ? in.dh : Tensor();
      fg::ops::AddRMSNormGrads norm =
          fg::ops::add_rmsnorm_backward(dn, dh, fwd.h, in.norm_weight, fwd.rstd);
      // The head gradients, and the same already packed (the attention's into_qkv path).
      for (bool packed : {false, true}) {
        SCOPED_TRACE(case_name({c, 0}) + (packed ? " packed" : "") + (with_dh ? " dh" : ""));
        fg::ops::QKVRoPEGrads g =
            packed ? fg::ops::rmsnorm_qkv_rope_backward_packed(
                         cfg, dqkv, dh, fwd.h, fwd.rstd, in.positions, in.norm_weight, in.wqkv)
                   : rmsnorm_qkv_rope_backward(cfg, in.dq, in.dk, in.dv, dh, fwd.h, fwd.rstd,
                                               in.positions, in.norm_weight, in.wqkv);
        EXPECT_LE(fg::max_abs_diff(g.dx, norm.dx), 1e-13);
        EXPECT_LE(fg::max_abs_diff(g.dnorm_weight, norm.dweight), 1e-13);
        EXPECT_LE(fg::max_abs_diff(g.dwqkv, dw_ref), 1e-13);
        // The norm weight's gradient into a given buffer, then added to it.
        Tensor into = Tensor::full({D}, NAN, DType::F64);
        for (bool add : {false, true})
          fg::ops::rmsnorm_qkv_rope_backward_packed(cfg, dqkv, dh, fwd.h, fwd.rstd, in.positions,
                                                    in.norm_weight, in.wqkv, Tensor(), false, into,
                                                    add);
        EXPECT_LE(fg::max_abs_diff(into, fg::ops::add_forward(norm.dweight, norm.dweight)), 1e-13);
        EXPECT_EQ(g.dbias.defined(), c.bias);
        if (c.bias) {
          std::vector<double> col(cfg.qkv_dim(), 0.0), d = dqkv.to_vector();
          for (int64_t r = 0; r < B * T; ++r)
            for (int64_t j = 0; j < cfg.qkv_dim(); ++j) col[j] += d[r * cfg.qkv_dim() + j];
          EXPECT_LE(
              fg::max_abs_diff(g.dbias, Tensor::from_vector(col, {cfg.qkv_dim()}, DType::F64)),
              1e-13);
        }
      }
    }
  }
}

TEST(RMSNormQKVRoPE, WithoutResidualHIsX) {
  FusedCase c = kCpuCases[1];
  FusedInputs in = make_inputs(c, DType::F64, Device::cpu(), 3);
  fg::ops::QKVRoPEOut out = rmsnorm_qkv_rope_forward(config_of(c), in.x, in.positions, Tensor(),
                                                     in.norm_weight, in.wqkv, Tensor());
  EXPECT_EQ(out.h.storage(), in.x.storage());  // no copy
}

TEST(RMSNormQKVRoPE, ForwardKeepsOnlyItsOutputs) {
  // Nothing but q, k, v, h and rstd is alive after the call: the normalized rows and
  // qkv are temporaries, and backward needs only h and rstd to recompute them.
  for (const FusedCase& c : kCpuCases) {
    QKVRoPEConfig cfg = config_of(c);
    FusedInputs in = make_inputs(c, DType::F32, Device::cpu(), 4);
    const int64_t before = fg::Storage::live_bytes();
    fg::ops::QKVRoPEOut out = rmsnorm_qkv_rope_forward(cfg, in.x, in.positions, in.residual,
                                                       in.norm_weight, in.wqkv, in.bias);
    const int64_t kept = fg::Storage::live_bytes() - before;
    int64_t outputs = out.q.nbytes() + out.k.nbytes() + out.v.nbytes() + out.rstd.nbytes();
    if (c.residual) outputs += out.h.nbytes();  // else h is x's storage
    EXPECT_EQ(kept, outputs) << case_name({c, 0});
    // The unfused composition also has to keep n (B*T, D) for the projection's backward.
    const int64_t before_composed = fg::Storage::live_bytes();
    Composed composed = compose_forward(cfg, in);
    EXPECT_EQ(fg::Storage::live_bytes() - before_composed - kept, composed.n.nbytes());
  }
}

TEST(RMSNormQKVRoPE, ConfigValidateNamesTheBadField) {
  QKVRoPEConfig good;
  good.hidden_dim = 36;
  good.num_heads = 6;
  good.num_kv_heads = 2;
  good.rotary_dim = 4;
  EXPECT_NO_THROW(good.validate());
  auto with = [&](auto change) {
    QKVRoPEConfig c = good;
    change(c);
    return c;
  };
  EXPECT_FG_ERROR(with([](QKVRoPEConfig& c) { c.hidden_dim = 35; }).validate(),
                  "QKVRoPEConfig: hidden_dim 35 is not a multiple of num_heads 6");
  EXPECT_FG_ERROR(with([](QKVRoPEConfig& c) { c.num_kv_heads = 4; }).validate(),
                  "QKVRoPEConfig: num_heads 6 is not a multiple of num_kv_heads 4");
  EXPECT_FG_ERROR(with([](QKVRoPEConfig& c) { c.rotary_dim = 3; }).validate(),
                  "QKVRoPEConfig: rotary_dim is 3 but must be even, positive and <= head_dim 6");
  EXPECT_FG_ERROR(with([](QKVRoPEConfig& c) { c.rotary_dim = 8; }).validate(), "rotary_dim is 8");
  EXPECT_FG_ERROR(with([](QKVRoPEConfig& c) { c.rotary_dim = 0; }).validate(), "rotary_dim is 0");
  EXPECT_FG_ERROR(with([](QKVRoPEConfig& c) { c.num_heads = 0; }).validate(),
                  "QKVRoPEConfig: num_heads is 0");
  EXPECT_FG_ERROR(with([](QKVRoPEConfig& c) { c.num_kv_heads = 0; }).validate(),
                  "QKVRoPEConfig: num_kv_heads is 0");
  EXPECT_FG_ERROR(with([](QKVRoPEConfig& c) { c.hidden_dim = -6; }).validate(),
                  "QKVRoPEConfig: hidden_dim is -6");
  EXPECT_FG_ERROR(with([](QKVRoPEConfig& c) { c.eps = -1; }).validate(),
                  "QKVRoPEConfig: eps is -1");
  EXPECT_FG_ERROR(with([](QKVRoPEConfig& c) { c.rope_theta = 0; }).validate(),
                  "QKVRoPEConfig: rope_theta is 0");
}

TEST(RMSNormQKVRoPE, ErrorsNameBothSides) {
  // D 32, H 4 (hd 8), Hkv 2: qkv_dim (4 + 4) * 8 = 64.
  QKVRoPEConfig cfg;
  cfg.hidden_dim = 32;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.rotary_dim = 8;
  cfg.use_bias = true;
  Tensor x = Tensor::zeros({2, 5, 32}), res = Tensor::zeros({2, 5, 32});
  Tensor nw = Tensor::ones({32}), w = Tensor::zeros({64, 32}), b = Tensor::zeros({64});
  Tensor pos = Tensor::from_ints({0, 1, 2, 3, 4}, {5});
  EXPECT_NO_THROW(rmsnorm_qkv_rope_forward(cfg, x, pos, res, nw, w, b));
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(cfg, x, pos, res, nw, Tensor::zeros({96, 32}), b),
                  "rmsnorm_qkv_rope: wqkv is (96, 32) but expected (64, 32)");
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(cfg, x, pos, res, nw, w.to(DType::F64), b),
                  "rmsnorm_qkv_rope: wqkv is f64 but expected f32");
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(cfg, Tensor::zeros({2, 5, 30}), pos, res, nw, w, b),
                  "rmsnorm_qkv_rope: x is (2, 5, 30) but expected (B, T, 32)");
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(cfg, x, pos, Tensor::zeros({2, 4, 32}), nw, w, b),
                  "rmsnorm_qkv_rope: residual is (2, 4, 32) but x is (2, 5, 32)");
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(cfg, x, pos, Tensor(), nw, w, b),
                  "rmsnorm_qkv_rope: residual is undefined");
  // The CPU rotates from the positions: it has no table, and takes none.
  EXPECT_FALSE(fg::ops::rope_table(pos, 8, 1e4).defined());
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(cfg, x, pos, res, nw, w, b, Tensor::zeros({5, 8})),
                  "rmsnorm_qkv_rope: a rope_table was given for positions on cpu (the CPU rotates "
                  "from the positions)");
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(cfg, x, pos, res, Tensor::ones({33}), w, b),
                  "rmsnorm_qkv_rope: norm_weight is (33,) but expected (32,)");
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(cfg, x, pos, res, nw, w, Tensor::zeros({63})),
                  "rmsnorm_qkv_rope: bias is (63,) but expected (64,)");
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(cfg, x, pos, res, nw, w, Tensor()),
                  "rmsnorm_qkv_rope: bias is undefined");
  EXPECT_FG_ERROR(
      rmsnorm_qkv_rope_forward(cfg, x, Tensor::from_ints({0, 1, 2}, {3}), res, nw, w, b),
      "rmsnorm_qkv_rope: positions is (3,) but expected (5,) or (2, 5)");
  QKVRoPEConfig plain = cfg;
  plain.add_residual = false;
  plain.use_bias = false;
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(plain, x, pos, res, nw, w, Tensor()),
                  "rmsnorm_qkv_rope: residual (2, 5, 32) was given but add_residual is false");
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(plain, x, pos, Tensor(), nw, w, b),
                  "rmsnorm_qkv_rope: bias (64,) was given but use_bias is false");
  QKVRoPEConfig bad = cfg;
  bad.num_kv_heads = 3;
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(bad, x, pos, res, nw, w, b), "num_kv_heads 3");

  Tensor dq = Tensor::zeros({2, 5, 4, 8}), dkv = Tensor::zeros({2, 5, 2, 8});
  Tensor rstd = Tensor::ones({10});
  EXPECT_NO_THROW(rmsnorm_qkv_rope_backward(cfg, dq, dkv, dkv, Tensor(), x, rstd, pos, nw, w));
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_backward(cfg, dkv, dkv, dkv, Tensor(), x, rstd, pos, nw, w),
                  "rmsnorm_qkv_rope_backward: dq is (2, 5, 2, 8) but expected (2, 5, 4, 8)");
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_backward(cfg, dq, dq, dkv, Tensor(), x, rstd, pos, nw, w),
                  "rmsnorm_qkv_rope_backward: dk is (2, 5, 4, 8) but expected (2, 5, 2, 8)");
  EXPECT_FG_ERROR(
      rmsnorm_qkv_rope_backward(cfg, dq, dkv, dkv, Tensor::zeros({2, 5}), x, rstd, pos, nw, w),
      "rmsnorm_qkv_rope_backward: dh is (2, 5) but h is (2, 5, 32)");
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_backward(cfg, dq, dkv, dkv, Tensor(), x,
                                            Tensor::ones({10}, DType::F64), pos, nw, w),
                  "rmsnorm_qkv_rope_backward: rstd is f64 but expected f32");
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_backward(cfg, dq, dkv, dkv, Tensor(), x, rstd, pos, nw,
                                            Tensor::zeros({64, 31})),
                  "rmsnorm_qkv_rope_backward: wqkv is (64, 31) but expected (64, 32)");
}

// ---------------------------------------------------------------------------
// The module and its autograd node, against the unfused graph add_rmsnorm + one
// linear per q/k/v row block + rope.

namespace ag = fg::ag;
using ag::Variable;

constexpr int64_t kB = 2, kT = 7, kH = 3, kHkv = 1, kHd = 10, kD = kH * kHd, kRot = 6;
constexpr double kEps = 1e-5, kTheta = 1e4;

Tensor layer_positions() {
  return Tensor::from_ints({5, 6, 7, 8, 9, 10, 11}, {kT});
}

struct Unfused {
  Variable q, k, v, h;
};
Unfused unfused_graph(const Variable& norm_weight, const Variable& x, const Variable& res,
                      const std::vector<Variable>& w, const std::vector<Variable>& b,
                      const Tensor& pos) {
  ag::AddRMSNormResult n = ag::add_rmsnorm(x, res, norm_weight, kEps);
  auto proj = [&](int i, int64_t heads) {
    return ag::reshape(ag::linear(n.y, w[i], b[i]), {kB, kT, heads, kHd});
  };
  return {ag::rope(proj(0, kH), pos, kRot, kTheta), ag::rope(proj(1, kHkv), pos, kRot, kTheta),
          proj(2, kHkv), n.h};
}

// The q, k and v row blocks of wqkv (or of the bias) as separate leaves.
std::vector<Variable> row_blocks(const Tensor& t) {
  const int64_t q = kH * kHd, kv = kHkv * kHd;
  return {Variable(t.slice(0, 0, q).clone(), true), Variable(t.slice(0, q, q + kv).clone(), true),
          Variable(t.slice(0, q + kv, q + 2 * kv).clone(), true)};
}

TEST(FusedRMSNormQKVRoPEModule, InitializesLikeTheModel) {
  Generator gen(3);
  ag::FusedRMSNormQKVRoPE m(kD, kH, kHkv, kRot, true, true, kEps, kTheta, gen);
  EXPECT_EQ(m.norm_weight.shape(), (Shape{kD}));
  EXPECT_EQ(fg::sum(m.norm_weight.data()), static_cast<double>(kD));
  EXPECT_EQ(m.wqkv.shape(), (Shape{(kH + 2 * kHkv) * kHd, kD}));
  EXPECT_EQ(fg::sum(m.bias.data()), 0.0);
  EXPECT_TRUE(m.wqkv.requires_grad() && m.norm_weight.requires_grad() && m.bias.requires_grad());
  std::vector<double> w = m.wqkv.data().to_vector();
  double ss = 0;
  for (double v : w) ss += v * v;
  EXPECT_NEAR(std::sqrt(ss / w.size()), 0.02, 0.002);
  Generator same(3);
  ag::FusedRMSNormQKVRoPE again(kD, kH, kHkv, kRot, true, true, kEps, kTheta, same);
  EXPECT_EQ(fg::max_abs_diff(again.wqkv.data(), m.wqkv.data()), 0.0);
  ag::FusedRMSNormQKVRoPE no_bias(kD, kH, kHkv, kRot, false, false, kEps, kTheta, gen);
  EXPECT_FALSE(no_bias.bias.defined());
  EXPECT_FG_ERROR(ag::FusedRMSNormQKVRoPE(31, kH, kHkv, kRot, true, false, kEps, kTheta, gen),
                  "hidden_dim 31 is not a multiple of num_heads 3");
}

TEST(FusedRMSNormQKVRoPEModule, NodeKeepsOnlyHAndRstd) {
  Generator gen(4);
  ag::FusedRMSNormQKVRoPE m(kD, kH, kHkv, kRot, true, true, kEps, kTheta, gen);
  Variable x(Tensor::randn({kB, kT, kD}, gen), true), res(Tensor::randn({kB, kT, kD}, gen), true);
  const Tensor pos = layer_positions();  // the node keeps a handle to it
  const int64_t rows = kB * kT, f32 = 4;
  const int64_t q_bytes = rows * kH * kHd * f32, kv_bytes = rows * kHkv * kHd * f32;
  const int64_t h_bytes = rows * kD * f32, rstd_bytes = rows * f32;

  int64_t before = fg::Storage::live_bytes(), fused = 0;
  {
    ag::QKVRoPEResult r = m.forward(x, pos, res);
    fused = fg::Storage::live_bytes() - before;
    ASSERT_TRUE(r.q.grad_fn());
  }
  // The outputs, and the node's h (one of them) and rstd: nothing else.
  EXPECT_EQ(fused, q_bytes + 2 * kv_bytes + h_bytes + rstd_bytes);
  EXPECT_EQ(fg::Storage::live_bytes(), before);  // the graph went with its outputs

  std::vector<Variable> w = row_blocks(m.wqkv.data()), b = row_blocks(m.bias.data());
  before = fg::Storage::live_bytes();
  int64_t unfused = 0;
  {
    Unfused u = unfused_graph(m.norm_weight, x, res, w, b, pos);
    unfused = fg::Storage::live_bytes() - before;
  }
  // The unfused graph keeps at least the normalized rows n (B*T, D) more.
  EXPECT_GE(unfused - fused, h_bytes);
}

TEST(FusedRMSNormQKVRoPEModule, GradientsMatchTheUnfusedGraph) {
  Generator gen(5);
  ag::FusedRMSNormQKVRoPE m(kD, kH, kHkv, kRot, true, true, kEps, kTheta, gen, DType::F64);
  m.bias.set_data(Tensor::randn(m.bias.shape(), gen, DType::F64));
  m.norm_weight.set_data(Tensor::uniform({kD}, gen, 0.5, 1.5, DType::F64));
  Variable x(Tensor::randn({kB, kT, kD}, gen, DType::F64), true);
  Variable res(Tensor::randn({kB, kT, kD}, gen, DType::F64), true);
  std::vector<Tensor> g = {Tensor::randn({kB, kT, kH, kHd}, gen, DType::F64),
                           Tensor::randn({kB, kT, kHkv, kHd}, gen, DType::F64),
                           Tensor::randn({kB, kT, kHkv, kHd}, gen, DType::F64),
                           Tensor::randn({kB, kT, kD}, gen, DType::F64)};
  const Tensor pos = layer_positions();

  ag::QKVRoPEResult r = m.forward(x, pos, res);
  ag::backward({r.q, r.k, r.v, r.h}, g);

  Variable x2(x.data(), true), res2(res.data(), true), nw2(m.norm_weight.data(), true);
  std::vector<Variable> w = row_blocks(m.wqkv.data()), b = row_blocks(m.bias.data());
  Unfused u = unfused_graph(nw2, x2, res2, w, b, pos);
  ag::backward({u.q, u.k, u.v, u.h}, g);

  EXPECT_LE(fg::max_abs_diff(x.grad(), x2.grad()), 1e-12);
  EXPECT_LE(fg::max_abs_diff(res.grad(), res2.grad()), 1e-12);
  EXPECT_LE(fg::max_abs_diff(m.norm_weight.grad(), nw2.grad()), 1e-12);
  const int64_t q = kH * kHd, kv = kHkv * kHd;
  const int64_t begin[3] = {0, q, q + kv}, end[3] = {q, q + kv, q + 2 * kv};
  for (int i = 0; i < 3; ++i) {
    EXPECT_LE(fg::max_abs_diff(m.wqkv.grad().slice(0, begin[i], end[i]), w[i].grad()), 1e-12) << i;
    EXPECT_LE(fg::max_abs_diff(m.bias.grad().slice(0, begin[i], end[i]), b[i].grad()), 1e-12) << i;
  }
}

TEST(FusedRMSNormQKVRoPEModule, WithoutResidualHIsX) {
  Generator gen(6);
  ag::FusedRMSNormQKVRoPE m(kD, kH, kHkv, kRot, false, false, kEps, kTheta, gen, DType::F64);
  Variable x(Tensor::randn({kB, kT, kD}, gen, DType::F64), true);
  ag::QKVRoPEResult r = m.forward(x, layer_positions());
  EXPECT_EQ(r.h.data().storage(), x.data().storage());
  EXPECT_FG_ERROR(m.forward(x, layer_positions(), Variable(x.data(), true)),
                  "residual (2, 7, 30) was given but add_residual is false");
  ag::backward({r.q, r.h}, {Tensor::randn(r.q.shape(), gen, DType::F64),
                            Tensor::ones(r.h.shape(), DType::F64)});
  EXPECT_TRUE(x.grad().defined());
  EXPECT_TRUE(m.wqkv.grad().defined());
  EXPECT_TRUE(m.norm_weight.grad().defined());
}

// ---------------------------------------------------------------------------
// CUDA against the CPU. The GPU runs the same composition with its kernels and
// cuBLASLt; the memory pool is filled with NaN blocks first so that an element a
// kernel leaves unwritten in a fresh output (or temporary) shows up as NaN.

void poison_pool(const std::vector<Shape>& shapes, DType dtype, Device device) {
  std::vector<Tensor> poison;
  for (const Shape& s : shapes) poison.push_back(Tensor::full(s, NAN, dtype, device));
}

Tensor on_cpu(const Tensor& t) {
  return t.defined() ? t.to(Device::cpu(), DType::F32) : Tensor();
}

FusedInputs inputs_on_cpu(const FusedInputs& g) {
  return {on_cpu(g.x),    on_cpu(g.residual), on_cpu(g.norm_weight),
          on_cpu(g.wqkv), on_cpu(g.bias),     g.positions.to(Device::cpu()),
          on_cpu(g.dq),   on_cpu(g.dk),       on_cpu(g.dv),
          on_cpu(g.dh)};
}

void check_fused_cuda(const FusedCase& c, DType dtype, double tol) {
  const Device gpu = Device::cuda(0);
  QKVRoPEConfig cfg = config_of(c);
  const int64_t rows = c.B * c.T, D = cfg.hidden_dim;
  FusedInputs g = make_inputs(c, dtype, gpu, 50 + c.hd + c.H);
  FusedInputs h = inputs_on_cpu(g);

  fg::ops::QKVRoPEOut ref =
      rmsnorm_qkv_rope_forward(cfg, h.x, h.positions, h.residual, h.norm_weight, h.wqkv, h.bias);
  poison_pool({{rows, D},
               {rows, cfg.qkv_dim()},
               {c.B, c.T, c.H, c.hd},
               {c.B, c.T, c.Hkv, c.hd},
               {c.B, c.T, c.Hkv, c.hd},
               {rows}},
              dtype, gpu);
  fg::ops::QKVRoPEOut out =
      rmsnorm_qkv_rope_forward(cfg, g.x, g.positions, g.residual, g.norm_weight, g.wqkv, g.bias);
  EXPECT_TRUE(out.q.is_cuda());
  EXPECT_EQ(out.q.dtype(), dtype);
  EXPECT_EQ(out.rstd.dtype(), DType::F32);
  EXPECT_TRUE(close_rel(out.q, ref.q, tol)) << "q";
  EXPECT_TRUE(close_rel(out.k, ref.k, tol)) << "k";
  EXPECT_TRUE(close_rel(out.v, ref.v, tol)) << "v";
  EXPECT_TRUE(close_rel(out.h, ref.h, tol)) << "h";
  EXPECT_TRUE(close_rel(out.rstd, ref.rstd, tol)) << "rstd";
  // A table made once (ops::rope_table, as a model's forward makes it for every layer) gives
  // the same bits as the one made inside.
  const fg::ops::QKVRoPEOut shared =
      rmsnorm_qkv_rope_forward(cfg, g.x, g.positions, g.residual, g.norm_weight, g.wqkv, g.bias,
                               fg::ops::rope_table(g.positions, c.rotary, cfg.rope_theta));
  EXPECT_EQ(shared.q.to_vector(), out.q.to_vector()) << "q, given table";
  EXPECT_EQ(shared.k.to_vector(), out.k.to_vector()) << "k, given table";
  EXPECT_EQ(shared.v.to_vector(), out.v.to_vector()) << "v, given table";

  // Backward on the GPU's own h and rstd; the CPU gets the same values.
  for (bool with_dh : {false, true}) {
    fg::ops::QKVRoPEGrads gr =
        rmsnorm_qkv_rope_backward(cfg, h.dq, h.dk, h.dv, with_dh ? h.dh : Tensor(), on_cpu(out.h),
                                  on_cpu(out.rstd), h.positions, h.norm_weight, h.wqkv);
    poison_pool(
        {{rows, cfg.qkv_dim()}, {rows, D}, {cfg.qkv_dim(), D}, {c.B, c.T, D}, {D}, {cfg.qkv_dim()}},
        dtype, gpu);
    fg::ops::QKVRoPEGrads gg =
        rmsnorm_qkv_rope_backward(cfg, g.dq, g.dk, g.dv, with_dh ? g.dh : Tensor(), out.h, out.rstd,
                                  g.positions, g.norm_weight, g.wqkv);
    // The same from the gradients packed by hand on the GPU (column sums for the bias).
    Tensor dqkv = Tensor::empty({rows, cfg.qkv_dim()}, dtype, gpu);
    Tensor heads = dqkv.view({c.B, c.T, c.H + 2 * c.Hkv, c.hd});
    heads.slice(2, 0, c.H).copy_(
        fg::ops::rope_backward(g.dq, g.positions, c.rotary, cfg.rope_theta));
    heads.slice(2, c.H, c.H + c.Hkv)
        .copy_(fg::ops::rope_backward(g.dk, g.positions, c.rotary, cfg.rope_theta));
    heads.slice(2, c.H + c.Hkv, c.H + 2 * c.Hkv).copy_(g.dv);
    fg::ops::QKVRoPEGrads gp = fg::ops::rmsnorm_qkv_rope_backward_packed(
        cfg, dqkv, with_dh ? g.dh : Tensor(), out.h, out.rstd, g.positions, g.norm_weight, g.wqkv);
    for (const fg::ops::QKVRoPEGrads* gpu_grads : {&gg, &gp}) {
      SCOPED_TRACE(std::string(gpu_grads == &gp ? "packed" : "heads") + ", dh " +
                   std::to_string(with_dh));
      EXPECT_TRUE(close_rel(gpu_grads->dx, gr.dx, tol)) << "dx";
      EXPECT_TRUE(close_rel(gpu_grads->dnorm_weight, gr.dnorm_weight, tol)) << "dnorm_weight";
      EXPECT_TRUE(close_rel(gpu_grads->dwqkv, gr.dwqkv, tol)) << "dwqkv";
      EXPECT_EQ(gpu_grads->dbias.defined(), c.bias);
      if (c.bias) EXPECT_TRUE(close_rel(gpu_grads->dbias, gr.dbias, tol)) << "dbias";
      EXPECT_EQ(gpu_grads->dx.dtype(), dtype);
    }
    // The norm weight's gradient into an f32 buffer (its f32 master's), written then added to.
    Tensor into = Tensor::full({D}, NAN, DType::F32, gpu);
    for (bool add : {false, true}) {
      fg::ops::QKVRoPEGrads gi = fg::ops::rmsnorm_qkv_rope_backward_packed(
          cfg, dqkv, with_dh ? g.dh : Tensor(), out.h, out.rstd, g.positions, g.norm_weight, g.wqkv,
          Tensor(), false, into, add);
      EXPECT_EQ(gi.dnorm_weight.raw_data(), into.raw_data());
      const Tensor want =
          add ? fg::ops::add_forward(gr.dnorm_weight, gr.dnorm_weight) : gr.dnorm_weight;
      EXPECT_TRUE(close_rel(into, want, tol)) << "dnorm_weight into, add " << add;
    }
  }
}

class RMSNormQKVRoPECuda : public ::testing::TestWithParam<FusedCase> {};

TEST_P(RMSNormQKVRoPECuda, F32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_fused_cuda(GetParam(), DType::F32, 1e-5);
}

TEST_P(RMSNormQKVRoPECuda, Bf16MatchesCpu) {
  FG_REQUIRE_GPU();
  check_fused_cuda(GetParam(), DType::BF16, 1e-2);
}

TEST_P(RMSNormQKVRoPECuda, ForwardKeepsOnlyItsOutputs) {
  FG_REQUIRE_GPU();
  const FusedCase& c = GetParam();
  FusedInputs g = make_inputs(c, DType::BF16, Device::cuda(0), 7);
  const int64_t before = fg::Storage::live_bytes();
  fg::ops::QKVRoPEOut out = rmsnorm_qkv_rope_forward(config_of(c), g.x, g.positions, g.residual,
                                                     g.norm_weight, g.wqkv, g.bias);
  int64_t outputs = out.q.nbytes() + out.k.nbytes() + out.v.nbytes() + out.rstd.nbytes();
  if (c.residual) outputs += out.h.nbytes();
  EXPECT_EQ(fg::Storage::live_bytes() - before, outputs);
}

// Odd row counts throughout; hidden sizes 128 to 8192; head dims 64 and 128 (16-byte
// kernels) and 6, 10, 32 (element-wise RoPE); GQA and MHA; full, partial (with
// pass-through packs) and odd-half rotary; bias and residual on and off; shared and
// per-batch positions with offsets into the thousands. On Hopper, head dims 64 and 128 with
// rotary_dim = head_dim or head_dim / 2 take the projection's GEMM epilogue (ping-pong at
// hidden <= 1024, cooperative above: both run here); the others the composed path.
INSTANTIATE_TEST_SUITE_P(
    Shapes, RMSNormQKVRoPECuda,
    ::testing::Values(FusedCase{2, 37, 3, 1, 6, 4, true, true, false, 7},
                      FusedCase{1, 129, 8, 2, 64, 64, true, false, true, 0},
                      FusedCase{3, 17, 4, 4, 32, 16, false, true, false, 100},
                      FusedCase{2, 65, 12, 4, 128, 64, true, true, false, 4000},
                      FusedCase{1, 1, 2, 1, 10, 10, false, false, false, 3},
                      FusedCase{1, 33, 4, 4, 64, 64, true, true, false, 0},       // D 256
                      FusedCase{1, 19, 2, 1, 128, 128, false, false, true, 9},    // D 256, GQA
                      FusedCase{4, 31, 6, 2, 64, 48, true, true, true, 7},        // pass-through
                      FusedCase{2, 21, 6, 3, 64, 20, false, true, false, 1000},   // odd half
                      FusedCase{3, 43, 12, 12, 64, 64, true, true, false, 2},     // GPT-2 heads
                      FusedCase{2, 9, 32, 8, 128, 128, true, false, true, 4090},  // D 4096 GQA
                      FusedCase{1, 7, 64, 8, 128, 128, true, true, false, 123},   // D 8192
                      FusedCase{2, 70, 20, 4, 64, 32, true, true, false, 11}),    // D 1280, r hd/2
    case_name);

TEST(RMSNormQKVRoPECudaErrors, PositionsOnTheWrongDevice) {
  FG_REQUIRE_GPU();
  FusedCase c{1, 3, 2, 1, 6, 6, true, false, false, 0};
  FusedInputs g = make_inputs(c, DType::F32, Device::cuda(0), 9);
  EXPECT_FG_ERROR(rmsnorm_qkv_rope_forward(config_of(c), g.x, g.positions.to(Device::cpu()),
                                           g.residual, g.norm_weight, g.wqkv, g.bias),
                  "rmsnorm_qkv_rope: positions is on cpu but the activations are on cuda:0");
}

#ifdef FG_CUDA
// The Hopper projection reads the table it is given (a table of other positions rotates by
// those), and a table that does not fit is an error naming it.
TEST(RMSNormQKVRoPECudaErrors, GivenRopeTable) {
  FG_REQUIRE_GPU();
  FusedCase c{2, 33, 4, 4, 64, 64, true, true, false, 0};
  const QKVRoPEConfig cfg = config_of(c);
  FusedInputs g = make_inputs(c, DType::BF16, Device::cuda(0), 13);
  FusedCase next = c;
  next.offset += 1;
  const Tensor later = positions_of(next, Device::cuda(0));
  auto q_of = [&](const Tensor& positions, const Tensor& table) {
    return rmsnorm_qkv_rope_forward(cfg, g.x, positions, g.residual, g.norm_weight, g.wqkv, g.bias,
                                    table)
        .q.to_vector();
  };
  const Tensor later_table = fg::ops::rope_table(later, c.rotary, cfg.rope_theta);
  if (fg::ops::detail::gemm_hopper_available()) {
    EXPECT_EQ(q_of(g.positions, later_table), q_of(later, Tensor()));
    EXPECT_NE(q_of(g.positions, later_table), q_of(g.positions, Tensor()));
  }
  EXPECT_FG_ERROR(q_of(g.positions, fg::ops::rope_table(g.positions, 32, cfg.rope_theta)),
                  "rmsnorm_qkv_rope: rope_table is (33, 32) but expected contiguous (33, 64) for "
                  "positions (33,) and rotary_dim 64");
  EXPECT_FG_ERROR(q_of(g.positions, later_table.to(fg::DType::F64)),
                  "rmsnorm_qkv_rope: rope_table is f64 but expected f32");
}

// The Hopper projection (bias + RoPE in the GEMM's epilogue) gives the same bits in every GEMM
// schedule: each output is the same sequence of fp32 wgmma sums whichever warpgroup, block or
// cluster computes it. The forward runs one schedule per hidden size (Bf16MatchesCpu checks
// it against the CPU); this covers the others, which bench_fused_qkv times.
TEST(RMSNormQKVRoPEHopper, EveryScheduleProjectsTheSameBits) {
  FG_REQUIRE_GPU();
  if (!fg::ops::detail::gemm_hopper_available())
    GTEST_SKIP() << "not a Hopper GPU, or no sm_90a build";
  for (const FusedCase& c : {FusedCase{2, 70, 20, 4, 64, 32, true, true, false, 11},
                             FusedCase{3, 43, 12, 12, 64, 64, true, false, true, 2},
                             FusedCase{2, 9, 32, 8, 128, 128, true, true, true, 4090}}) {
    SCOPED_TRACE(case_name({c, 0}));
    const QKVRoPEConfig cfg = config_of(c);
    FusedInputs g = make_inputs(c, DType::BF16, Device::cuda(0), 21);
    const Tensor n = g.x.view({c.B * c.T, cfg.hidden_dim});  // any bf16 rows stand in for n
    std::vector<std::vector<double>> first;
    for (fg::ops::detail::GemmSchedule schedule : fg::ops::detail::kGemmSchedules) {
      SCOPED_TRACE(fg::ops::detail::gemm_schedule_name(schedule));
      fg::ops::QKVRoPEOut out;
      out.q = Tensor::full({c.B, c.T, c.H, c.hd}, NAN, DType::BF16, Device::cuda(0));
      out.k = Tensor::full({c.B, c.T, c.Hkv, c.hd}, NAN, DType::BF16, Device::cuda(0));
      out.v = Tensor::full({c.B, c.T, c.Hkv, c.hd}, NAN, DType::BF16, Device::cuda(0));
      ASSERT_TRUE(fg::ops::detail::qkv_rope_projection_cuda(cfg, n, g.wqkv, g.bias, g.positions,
                                                            Tensor(), c.T, out, schedule));
      const std::vector<std::vector<double>> got = {out.q.to_vector(), out.k.to_vector(),
                                                    out.v.to_vector()};
      for (const auto& t : got)
        for (double e : t) ASSERT_TRUE(std::isfinite(e)) << "an output left unwritten";
      if (first.empty())
        first = got;
      else
        EXPECT_EQ(got, first);
    }
  }
}
#endif  // FG_CUDA

}  // namespace
