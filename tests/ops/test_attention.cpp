// Causal GQA attention: CPU forward and backward against a naive f64 reference
// written here and against finite differences, masking and edge cases, error
// messages, CUDA against the CPU (f32, bf16) over shapes that fit no block size,
// and the flash kernels (every tiling) against the CPU and the simple kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/attention/attention.h"
#include "ops/attention/grid_order.h"
#include "ops/rope/rope.h"
#include "test_util.h"

#ifdef FG_CUDA
#include "core/cuda_utils.h"
#endif

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;

namespace {

struct AttnShape {
  int64_t B, T, H, Hkv, hd;
};

std::string shape_name(const AttnShape& s) {
  return "B" + std::to_string(s.B) + "_T" + std::to_string(s.T) + "_H" + std::to_string(s.H) +
         "_Hkv" + std::to_string(s.Hkv) + "_hd" + std::to_string(s.hd);
}

struct Qkv {
  Tensor q, k, v;
};

Qkv random_qkv(const AttnShape& s, uint64_t seed, DType dtype = DType::F64,
               Device device = Device::cpu(), double std = 1.0) {
  Generator gen(seed);
  return {Tensor::randn({s.B, s.T, s.H, s.hd}, gen, dtype, device, 0.0, std),
          Tensor::randn({s.B, s.T, s.Hkv, s.hd}, gen, dtype, device, 0.0, std),
          Tensor::randn({s.B, s.T, s.Hkv, s.hd}, gen, dtype, device, 0.0, std)};
}

// The textbook definition, one query row at a time, in f64.
struct NaiveOut {
  Tensor out, lse, dq, dk, dv;
};

NaiveOut naive_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& dout = Tensor()) {
  int64_t B = q.size(0), T = q.size(1), H = q.size(2), Hkv = k.size(2), hd = q.size(3);
  int64_t group = H / Hkv;
  double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  auto Q = q.to_vector(), K = k.to_vector(), V = v.to_vector();
  std::vector<double> dO = dout.defined() ? dout.to_vector() : std::vector<double>(Q.size(), 0.0);
  std::vector<double> O(Q.size()), L(B * H * T), dQ(Q.size()), dK(K.size()), dV(V.size());
  auto qi = [&](int64_t b, int64_t t, int64_t h, int64_t i) {
    return ((b * T + t) * H + h) * hd + i;
  };
  auto ki = [&](int64_t b, int64_t t, int64_t g, int64_t i) {
    return ((b * T + t) * Hkv + g) * hd + i;
  };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      int64_t g = h / group;
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> s(t + 1), p(t + 1), dp(t + 1);
        double mx = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          double acc = 0;
          for (int64_t i = 0; i < hd; ++i) acc += Q[qi(b, t, h, i)] * K[ki(b, j, g, i)];
          s[j] = acc * scale;
          mx = std::max(mx, s[j]);
        }
        double total = 0;
        for (int64_t j = 0; j <= t; ++j) total += std::exp(s[j] - mx);
        double lse = mx + std::log(total);
        L[(b * H + h) * T + t] = lse;
        for (int64_t j = 0; j <= t; ++j) p[j] = std::exp(s[j] - lse);
        for (int64_t i = 0; i < hd; ++i) {
          double acc = 0;
          for (int64_t j = 0; j <= t; ++j) acc += p[j] * V[ki(b, j, g, i)];
          O[qi(b, t, h, i)] = acc;
        }
        // Backward of this row: dP = dO V^T, dS = P (dP - sum P dP).
        double dsum = 0;
        for (int64_t j = 0; j <= t; ++j) {
          double acc = 0;
          for (int64_t i = 0; i < hd; ++i) acc += dO[qi(b, t, h, i)] * V[ki(b, j, g, i)];
          dp[j] = acc;
          dsum += p[j] * acc;
        }
        for (int64_t j = 0; j <= t; ++j) {
          double ds = p[j] * (dp[j] - dsum);
          for (int64_t i = 0; i < hd; ++i) {
            dQ[qi(b, t, h, i)] += ds * K[ki(b, j, g, i)] * scale;
            dK[ki(b, j, g, i)] += ds * Q[qi(b, t, h, i)] * scale;
            dV[ki(b, j, g, i)] += p[j] * dO[qi(b, t, h, i)];
          }
        }
      }
    }
  }
  auto make = [](const std::vector<double>& x, const Shape& shape) {
    return Tensor::from_vector(x, shape, DType::F64);
  };
  return {make(O, q.shape()), make(L, {B, H, T}), make(dQ, q.shape()), make(dK, k.shape()),
          make(dV, v.shape())};
}

// f64 copies on the CPU.
Tensor f64(const Tensor& t) {
  return t.to(Device::cpu(), DType::F64);
}

// Fills the GPU memory pool with NaN blocks of these sizes and frees them, so a
// kernel that leaves an output element unwritten shows NaN there.
void poison_pool(const std::vector<Shape>& shapes, DType dtype, Device device) {
  std::vector<Tensor> poison;
  for (const Shape& s : shapes) poison.push_back(Tensor::full(s, NAN, dtype, device));
  for (const Shape& s : shapes) poison.push_back(Tensor::full(s, NAN, DType::F32, device));
}

const std::vector<AttnShape> kCpuShapes = {
    {1, 1, 1, 1, 1}, {2, 5, 6, 2, 3},  {1, 7, 3, 1, 5},
    {3, 4, 2, 2, 5}, {2, 13, 4, 4, 9}, {1, 37, 6, 3, 11},
};

class AttentionCpu : public ::testing::TestWithParam<AttnShape> {};

TEST_P(AttentionCpu, ForwardMatchesNaive) {
  AttnShape s = GetParam();
  Qkv x = random_qkv(s, 7);
  NaiveOut ref = naive_attention(x.q, x.k, x.v);
  fg::ops::AttentionOut r = fg::ops::attention_forward(x.q, x.k, x.v);
  EXPECT_EQ(r.out.dtype(), DType::F64);
  EXPECT_EQ(r.lse.dtype(), DType::F64);
  EXPECT_LT(fg::max_abs_diff(r.out, ref.out), 1e-12);
  EXPECT_LT(fg::max_abs_diff(r.lse, ref.lse), 1e-12);
  // f32 in: softmax in f32, lse in f32.
  fg::ops::AttentionOut r32 =
      fg::ops::attention_forward(x.q.to(DType::F32), x.k.to(DType::F32), x.v.to(DType::F32));
  EXPECT_EQ(r32.out.dtype(), DType::F32);
  EXPECT_EQ(r32.lse.dtype(), DType::F32);
  EXPECT_TRUE(close_rel(r32.out, ref.out, 1e-5));
  EXPECT_TRUE(close_rel(r32.lse, ref.lse, 1e-5));
}

TEST_P(AttentionCpu, BackwardMatchesNaive) {
  AttnShape s = GetParam();
  Qkv x = random_qkv(s, 8);
  Generator gen(99);
  Tensor dout = Tensor::randn(x.q.shape(), gen, DType::F64);
  NaiveOut ref = naive_attention(x.q, x.k, x.v, dout);
  fg::ops::AttentionOut r = fg::ops::attention_forward(x.q, x.k, x.v);
  fg::ops::AttentionGrads g = fg::ops::attention_backward(dout, x.q, x.k, x.v, r.out, r.lse);
  EXPECT_LT(fg::max_abs_diff(g.dq, ref.dq), 1e-11);
  EXPECT_LT(fg::max_abs_diff(g.dk, ref.dk), 1e-11);
  EXPECT_LT(fg::max_abs_diff(g.dv, ref.dv), 1e-11);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionCpu, ::testing::ValuesIn(kCpuShapes),
                         [](const auto& info) { return shape_name(info.param); });

TEST(AttentionCpuEdge, FutureKeysAndValuesDoNotChangeEarlierRows) {
  AttnShape s{2, 9, 4, 2, 5};
  Qkv x = random_qkv(s, 3);
  fg::ops::AttentionOut before = fg::ops::attention_forward(x.q, x.k, x.v);
  const int64_t t0 = 4;
  // New keys and values at positions > t0; rows <= t0 must be bit-identical.
  Qkv noise = random_qkv(s, 4, DType::F64, Device::cpu(), 5.0);
  Tensor k2 = x.k.clone(), v2 = x.v.clone();
  k2.slice(1, t0 + 1, s.T).copy_(noise.k.slice(1, t0 + 1, s.T));
  v2.slice(1, t0 + 1, s.T).copy_(noise.v.slice(1, t0 + 1, s.T));
  fg::ops::AttentionOut after = fg::ops::attention_forward(x.q, k2, v2);
  EXPECT_EQ(fg::max_abs_diff(before.out.slice(1, 0, t0 + 1), after.out.slice(1, 0, t0 + 1)), 0.0);
  EXPECT_EQ(fg::max_abs_diff(before.lse.slice(2, 0, t0 + 1), after.lse.slice(2, 0, t0 + 1)), 0.0);
  // ... and the later rows do see the change.
  EXPECT_GT(fg::max_abs_diff(before.out.slice(1, t0 + 1, s.T), after.out.slice(1, t0 + 1, s.T)),
            1e-3);
}

TEST(AttentionCpuEdge, SingleTokenReturnsItsValue) {
  AttnShape s{3, 1, 6, 2, 7};
  Qkv x = random_qkv(s, 5);
  fg::ops::AttentionOut r = fg::ops::attention_forward(x.q, x.k, x.v);
  auto out = r.out.to_vector(), v = x.v.to_vector();
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t i = 0; i < s.hd; ++i)
        EXPECT_EQ(out[(b * s.H + h) * s.hd + i], v[(b * s.Hkv + h / 3) * s.hd + i]);
  // lse is the one scaled score; dq is 0 (a softmax over one key is constant).
  NaiveOut ref = naive_attention(x.q, x.k, x.v);
  EXPECT_LT(fg::max_abs_diff(r.lse, ref.lse), 1e-12);
  Generator gen(6);
  Tensor dout = Tensor::randn(x.q.shape(), gen, DType::F64);
  fg::ops::AttentionGrads g = fg::ops::attention_backward(dout, x.q, x.k, x.v, r.out, r.lse);
  EXPECT_EQ(fg::max_abs_diff(g.dq, Tensor::zeros(x.q.shape(), DType::F64)), 0.0);
  EXPECT_EQ(fg::max_abs_diff(g.dk, Tensor::zeros(x.k.shape(), DType::F64)), 0.0);
}

TEST(AttentionCpuEdge, StridedInputsMatchContiguous) {
  AttnShape s{2, 6, 4, 2, 3};
  Qkv x = random_qkv(s, 12);
  // q as a transposed view of a (B, H, T, hd) tensor.
  Tensor q_bhtd = x.q.transpose(1, 2).contiguous();
  Tensor q_view = q_bhtd.transpose(1, 2);
  ASSERT_FALSE(q_view.is_contiguous());
  fg::ops::AttentionOut a = fg::ops::attention_forward(x.q, x.k, x.v);
  fg::ops::AttentionOut b = fg::ops::attention_forward(q_view, x.k, x.v);
  EXPECT_EQ(fg::max_abs_diff(a.out, b.out), 0.0);
}

TEST(AttentionCpuEdge, Bf16ComputesInF32) {
  AttnShape s{2, 11, 4, 2, 8};
  Qkv x = random_qkv(s, 13, DType::BF16);
  fg::ops::AttentionOut r = fg::ops::attention_forward(x.q, x.k, x.v);
  EXPECT_EQ(r.out.dtype(), DType::BF16);
  EXPECT_EQ(r.lse.dtype(), DType::F32);
  Generator gen(14);
  Tensor dout = Tensor::randn(x.q.shape(), gen, DType::BF16);
  NaiveOut ref = naive_attention(f64(x.q), f64(x.k), f64(x.v), f64(dout));
  EXPECT_TRUE(close_rel(r.out, ref.out, 1e-2));
  EXPECT_TRUE(close_rel(r.lse, ref.lse, 1e-5));
  fg::ops::AttentionGrads g = fg::ops::attention_backward(dout, x.q, x.k, x.v, r.out, r.lse);
  EXPECT_EQ(g.dq.dtype(), DType::BF16);
  EXPECT_TRUE(close_rel(g.dq, ref.dq, 1e-2));
  EXPECT_TRUE(close_rel(g.dk, ref.dk, 1e-2));
  EXPECT_TRUE(close_rel(g.dv, ref.dv, 1e-2));
}

TEST(AttentionCpuEdge, ErrorsNameBothSides) {
  using fg::ops::attention_backward;
  using fg::ops::attention_forward;
  Tensor q = Tensor::zeros({2, 5, 6, 7}), k = Tensor::zeros({2, 5, 4, 7});
  EXPECT_FG_ERROR(attention_forward(q, k, k), "attention: q is (2, 5, 6, 7) but k is (2, 5, 4, 7)");
  Tensor k2 = Tensor::zeros({2, 5, 2, 7}), v3 = Tensor::zeros({2, 5, 3, 7});
  EXPECT_FG_ERROR(attention_forward(q, k2, v3),
                  "attention: k is (2, 5, 2, 7) but v is (2, 5, 3, 7)");
  EXPECT_FG_ERROR(attention_forward(q, Tensor::zeros({2, 4, 2, 7}), Tensor::zeros({2, 4, 2, 7})),
                  "q is (2, 5, 6, 7) but k is (2, 4, 2, 7)");
  EXPECT_FG_ERROR(attention_forward(q, Tensor::zeros({2, 5, 2, 8}), Tensor::zeros({2, 5, 2, 8})),
                  "q is (2, 5, 6, 7) but k is (2, 5, 2, 8)");
  EXPECT_FG_ERROR(attention_forward(Tensor::zeros({5, 6, 7}), k2, k2), "q must be (B, T, H, hd)");
  EXPECT_FG_ERROR(attention_forward(q, k2.to(DType::F64), k2), "attention: q is f32 but k is f64");
  EXPECT_FG_ERROR(attention_forward(q, k2, k2.to(DType::F64)), "attention: q is f32 but v is f64");
  EXPECT_FG_ERROR(attention_forward(q, Tensor(), k2), "attention: k is undefined");
  fg::ops::AttentionOut r = attention_forward(q, k2, k2);
  EXPECT_FG_ERROR(attention_backward(Tensor::zeros({2, 5, 6, 6}), q, k2, k2, r.out, r.lse),
                  "attention_backward: dout is (2, 5, 6, 6) but q is (2, 5, 6, 7)");
  EXPECT_FG_ERROR(attention_backward(r.out, q, k2, k2, r.out, r.lse.to(DType::F64)),
                  "attention_backward: lse is f64 but expected f32");
  EXPECT_FG_ERROR(attention_backward(r.out, q, k2, k2, r.out, Tensor::zeros({2, 5, 6})),
                  "attention_backward: lse is (2, 5, 6) but expected (2, 6, 5)");
}

TEST(AttentionCpuEdge, BackwardMatchesFiniteDifferences) {
  // Central differences in f64 on L = <out, w> through the ops API (the autograd
  // wrapper has its own check in `gradcheck --ops`).
  for (AttnShape s :
       {AttnShape{2, 5, 6, 2, 3}, AttnShape{1, 6, 3, 1, 5}, AttnShape{2, 1, 2, 1, 3}}) {
    Qkv x = random_qkv(s, 17);
    Generator gen(18);
    Tensor w = Tensor::uniform(x.q.shape(), gen, -1.0, 1.0, DType::F64);
    auto loss = [&](const Tensor& q, const Tensor& k, const Tensor& v) {
      auto out = fg::ops::attention_forward(q, k, v).out.to_vector(), wv = w.to_vector();
      double total = 0;
      for (size_t i = 0; i < out.size(); ++i) total += out[i] * wv[i];
      return total;
    };
    fg::ops::AttentionOut r = fg::ops::attention_forward(x.q, x.k, x.v);
    fg::ops::AttentionGrads g = fg::ops::attention_backward(w, x.q, x.k, x.v, r.out, r.lse);
    const Tensor* inputs[] = {&x.q, &x.k, &x.v};
    const Tensor* grads[] = {&g.dq, &g.dk, &g.dv};
    const double eps = 1e-6;
    for (int which = 0; which < 3; ++which) {
      auto analytic = grads[which]->to_vector();
      auto base = inputs[which]->to_vector();
      for (size_t i = 0; i < base.size(); ++i) {
        auto moved = [&](double delta) {
          std::vector<double> values = base;
          values[i] += delta;
          Tensor t = Tensor::from_vector(values, inputs[which]->shape(), DType::F64);
          Tensor in[] = {x.q, x.k, x.v};
          in[which] = t;
          return loss(in[0], in[1], in[2]);
        };
        double numeric = (moved(eps) - moved(-eps)) / (2 * eps);
        ASSERT_LE(std::fabs(analytic[i] - numeric), 1e-5 + 1e-3 * std::fabs(numeric))
            << shape_name(s) << " input " << which << " element " << i;
      }
    }
  }
}

// ---- CUDA against the CPU ----

const std::vector<AttnShape> kCudaShapes = {
    {1, 1, 3, 1, 8},     {2, 5, 6, 2, 3},    {2, 37, 6, 2, 24},  {3, 129, 4, 4, 64},
    {1, 300, 8, 2, 128}, {2, 65, 5, 5, 72},  {1, 257, 6, 1, 33}, {2, 100, 3, 3, 7},
    {1, 520, 4, 2, 96},  {1, 64, 2, 1, 256},
};

class AttentionCuda : public ::testing::TestWithParam<AttnShape> {};

// ---- attention_backward_into_qkv: the gradients wrt q and k before RoPE, packed ----

// Positions (T) from `offset`, or (B, T) with each sequence shifted by 3 b.
Tensor rope_positions(const AttnShape& s, bool per_batch, int32_t offset, Device device) {
  std::vector<int32_t> pos;
  for (int64_t b = 0; b < (per_batch ? s.B : 1); ++b)
    for (int64_t t = 0; t < s.T; ++t) pos.push_back(offset + static_cast<int32_t>(3 * b + t));
  Tensor p = per_batch ? Tensor::from_ints(pos, {s.B, s.T}) : Tensor::from_ints(pos, {s.T});
  return p.to(device);
}

// The definition: attention_backward, then RoPE's backward on dq and dk, packed by hand
// into (B*T, (H + 2 Hkv) hd) rows on the CPU in f64.
Tensor packed_reference(const Tensor& dout, const Qkv& x, const fg::ops::AttentionOut& fwd,
                        const Tensor& positions, int64_t rotary, double theta) {
  fg::ops::AttentionGrads g = fg::ops::attention_backward(f64(dout), f64(x.q), f64(x.k), f64(x.v),
                                                          f64(fwd.out), f64(fwd.lse));
  const Tensor pos = positions.to(Device::cpu());
  const Tensor dq0 = fg::ops::rope_backward(g.dq, pos, rotary, theta);
  const Tensor dk0 = fg::ops::rope_backward(g.dk, pos, rotary, theta);
  const int64_t B = x.q.size(0), T = x.q.size(1), H = x.q.size(2), Hkv = x.k.size(2),
                hd = x.q.size(3);
  Tensor packed = Tensor::empty({B * T, (H + 2 * Hkv) * hd}, DType::F64);
  Tensor heads = packed.view({B, T, H + 2 * Hkv, hd});
  heads.slice(2, 0, H).copy_(dq0);
  heads.slice(2, H, H + Hkv).copy_(dk0);
  heads.slice(2, H + Hkv, H + 2 * Hkv).copy_(g.dv);
  return packed;
}

TEST(AttentionIntoQkv, CpuIsAttentionBackwardThenRopeBackward) {
  for (bool per_batch : {false, true}) {
    const AttnShape s{2, 9, 4, 2, 6};
    Qkv x = random_qkv(s, 101);
    Generator gen(102);
    Tensor dout = Tensor::randn(x.q.shape(), gen, DType::F64);
    fg::ops::AttentionOut fwd = fg::ops::attention_forward(x.q, x.k, x.v);
    const Tensor pos = rope_positions(s, per_batch, 5, Device::cpu());
    Tensor dqkv = Tensor::full({s.B * s.T, (s.H + 2 * s.Hkv) * s.hd}, NAN, DType::F64);
    fg::ops::attention_backward_into_qkv(dout, x.q, x.k, x.v, fwd.out, fwd.lse, pos, 4, 500.0,
                                         dqkv);
    EXPECT_EQ(fg::max_abs_diff(dqkv, packed_reference(dout, x, fwd, pos, 4, 500.0)), 0.0)
        << "per_batch " << per_batch;
  }
}

TEST(AttentionIntoQkv, ErrorsNameTheArgument) {
  const AttnShape s{1, 4, 2, 1, 8};
  Qkv x = random_qkv(s, 103);
  fg::ops::AttentionOut fwd = fg::ops::attention_forward(x.q, x.k, x.v);
  const Tensor pos = rope_positions(s, false, 0, Device::cpu());
  Tensor bad = Tensor::zeros({4, 31}, DType::F64);
  EXPECT_FG_ERROR(fg::ops::attention_backward_into_qkv(fwd.out, x.q, x.k, x.v, fwd.out, fwd.lse,
                                                       pos, 8, 1e4, bad),
                  "attention_backward_into_qkv: dqkv is (4, 31) but expected (4, 32)");
  Tensor good = Tensor::zeros({4, 32}, DType::F64);
  EXPECT_FG_ERROR(fg::ops::attention_backward_into_qkv(fwd.out, x.q, x.k, x.v, fwd.out, fwd.lse,
                                                       pos, 10, 1e4, good),
                  "rotary_dim is 10 but must be even, positive and <= head_dim 8");
}

// GPU forward and backward in `dtype` against the CPU in f64 on the same
// (rounded) inputs.
void check_cuda_against_cpu(const AttnShape& s, DType dtype, double tol, double input_std) {
  Device gpu = Device::cuda(0);
  Qkv x = random_qkv(s, 21, dtype, gpu, input_std);
  Generator gen(22);
  Tensor dout = Tensor::randn(x.q.shape(), gen, dtype, gpu);
  Tensor q64 = f64(x.q), k64 = f64(x.k), v64 = f64(x.v), dout64 = f64(dout);
  fg::ops::AttentionOut ref = fg::ops::attention_forward(q64, k64, v64);
  fg::ops::AttentionGrads ref_g =
      fg::ops::attention_backward(dout64, q64, k64, v64, ref.out, ref.lse);

  poison_pool({x.q.shape(), {s.B, s.H, s.T}}, dtype, gpu);
  fg::ops::AttentionOut r = fg::ops::attention_forward(x.q, x.k, x.v);
  ASSERT_TRUE(r.out.is_cuda());
  EXPECT_EQ(r.out.dtype(), dtype);
  EXPECT_EQ(r.lse.dtype(), DType::F32);
  EXPECT_FALSE(fg::has_non_finite(r.out));
  EXPECT_FALSE(fg::has_non_finite(r.lse));
  EXPECT_TRUE(close_rel(r.out, ref.out, tol)) << "out";
  EXPECT_TRUE(close_rel(r.lse, ref.lse, 1e-5)) << "lse";

  poison_pool({x.q.shape(), x.k.shape(), x.v.shape()}, dtype, gpu);
  fg::ops::AttentionGrads g = fg::ops::attention_backward(dout, x.q, x.k, x.v, r.out, r.lse);
  for (const Tensor* t : {&g.dq, &g.dk, &g.dv}) {
    EXPECT_TRUE(t->is_cuda());
    EXPECT_EQ(t->dtype(), dtype);
    EXPECT_FALSE(fg::has_non_finite(*t));
  }
  EXPECT_TRUE(close_rel(g.dq, ref_g.dq, tol)) << "dq";
  EXPECT_TRUE(close_rel(g.dk, ref_g.dk, tol)) << "dk";
  EXPECT_TRUE(close_rel(g.dv, ref_g.dv, tol)) << "dv";
}

TEST_P(AttentionCuda, F32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_cuda_against_cpu(GetParam(), DType::F32, 1e-5, 1.0);
}

TEST_P(AttentionCuda, F32SharpSoftmaxMatchesCpu) {
  FG_REQUIRE_GPU();
  check_cuda_against_cpu(GetParam(), DType::F32, 1e-5, 3.0);
}

TEST_P(AttentionCuda, Bf16MatchesCpu) {
  FG_REQUIRE_GPU();
  check_cuda_against_cpu(GetParam(), DType::BF16, 1e-2, 1.0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionCuda, ::testing::ValuesIn(kCudaShapes),
                         [](const auto& info) { return shape_name(info.param); });

TEST(AttentionCudaEdge, F32CpuAndGpuAgree) {
  FG_REQUIRE_GPU();
  // CPU f32 against GPU f32 directly (the other tests compare with f64).
  AttnShape s{2, 45, 6, 3, 40};
  Qkv x = random_qkv(s, 31, DType::F32);
  fg::ops::AttentionOut c = fg::ops::attention_forward(x.q, x.k, x.v);
  Device gpu = Device::cuda(0);
  fg::ops::AttentionOut g = fg::ops::attention_forward(x.q.to(gpu), x.k.to(gpu), x.v.to(gpu));
  EXPECT_TRUE(close_rel(g.out, c.out, 1e-5));
  EXPECT_TRUE(close_rel(g.lse, c.lse, 1e-5));
}

TEST(AttentionCudaEdge, NonFiniteInputPropagates) {
  FG_REQUIRE_GPU();
  AttnShape s{1, 8, 2, 1, 16};
  Device gpu = Device::cuda(0);
  Qkv x = random_qkv(s, 32, DType::F32);
  x.v.slice(1, 3, 4).fill_(NAN);  // position 3: rows t >= 3 read it
  fg::ops::AttentionOut r = fg::ops::attention_forward(x.q.to(gpu), x.k.to(gpu), x.v.to(gpu));
  EXPECT_FALSE(fg::has_non_finite(r.out.slice(1, 0, 3)));
  EXPECT_TRUE(fg::has_non_finite(r.out.slice(1, 3, 4)));
}

// ---- the flash kernels (bf16, head_dim 64 and 128) ----

// The closed form of grid_tile against the order written as loops: groups of near-equal
// size one after the other, inside a group rank by rank across its heads.
TEST(AttentionGridOrder, BlocksWalkGroupsRankByRank) {
  namespace d = fg::ops::detail;
  struct Grid {
    int tiles, seq_heads, groups;
  };
  for (Grid c : {Grid{1, 1, 1}, Grid{8, 192, 5}, Grid{32, 32, 3}, Grid{7, 5, 5}, Grid{3, 10, 4},
                 Grid{32, 32, 1}, Grid{16, 33, 32}}) {
    SCOPED_TRACE(std::to_string(c.tiles) + " tiles, " + std::to_string(c.seq_heads) + " heads, " +
                 std::to_string(c.groups) + " groups");
    int64_t block = 0;
    for (int g = 0; g < c.groups; ++g) {
      const int first = g * c.seq_heads / c.groups, end = (g + 1) * c.seq_heads / c.groups;
      for (int rank = 0; rank < c.tiles; ++rank)
        for (int head = first; head < end; ++head, ++block) {
          const d::GridTile t = d::grid_tile(block, c.tiles, c.seq_heads, c.groups);
          ASSERT_EQ(t.rank, rank) << "block " << block;
          ASSERT_EQ(t.seq_head, head) << "block " << block;
        }
    }
    EXPECT_EQ(block, int64_t{c.tiles} * c.seq_heads);
  }
  // One group: heads fastest; a group per head: a head's tiles together.
  EXPECT_EQ(d::grid_tile(13, 4, 5, 1).rank, 2);
  EXPECT_EQ(d::grid_tile(13, 4, 5, 1).seq_head, 3);
  EXPECT_EQ(d::grid_tile(13, 4, 5, 5).rank, 1);
  EXPECT_EQ(d::grid_tile(13, 4, 5, 5).seq_head, 3);
  // About two waves per group, at least one head per group.
  EXPECT_EQ(d::grid_groups(32, 32, 132), 3);
  EXPECT_EQ(d::grid_groups(8, 192, 132), 5);
  EXPECT_EQ(d::grid_groups(2, 1, 132), 1);
  EXPECT_EQ(d::grid_groups(1000, 2, 132), 2);
}

#ifdef FG_CUDA  // the flash kernels exist only in CUDA builds
// Odd lengths (1, 17, 127, 1000: no tile size divides them), one multiple of
// every tile, MHA and GQA (groups of 2, 3, 4), batch > 1, both head dims.
const std::vector<AttnShape> kFlashShapes = {
    {1, 1, 2, 1, 64},    {2, 17, 4, 2, 64},    {1, 127, 3, 3, 128},
    {2, 1000, 4, 2, 64}, {1, 1000, 4, 1, 128}, {3, 129, 2, 2, 128},
    {2, 256, 4, 4, 64},  {1, 17, 8, 2, 128},   {2, 300, 6, 2, 128},
};

class AttentionFlash : public ::testing::TestWithParam<AttnShape> {};

// Outputs allocated after the pool was filled with NaN, so unwritten elements show.
fg::ops::AttentionOut poisoned_forward_outputs(const AttnShape& s) {
  Device gpu = Device::cuda(0);
  poison_pool({{s.B, s.T, s.H, s.hd}, {s.B, s.H, s.T}}, DType::BF16, gpu);
  return {Tensor::empty({s.B, s.T, s.H, s.hd}, DType::BF16, gpu),
          Tensor::empty({s.B, s.H, s.T}, DType::F32, gpu)};
}

fg::ops::AttentionGrads poisoned_grads(const AttnShape& s) {
  Device gpu = Device::cuda(0);
  poison_pool({{s.B, s.T, s.H, s.hd}, {s.B, s.T, s.Hkv, s.hd}, {s.B, s.T, s.Hkv, s.hd}},
              DType::BF16, gpu);
  return {Tensor::empty({s.B, s.T, s.H, s.hd}, DType::BF16, gpu),
          Tensor::empty({s.B, s.T, s.Hkv, s.hd}, DType::BF16, gpu),
          Tensor::empty({s.B, s.T, s.Hkv, s.hd}, DType::BF16, gpu)};
}

// Every tiling of the forward and the backward against the f64 CPU reference
// on the same (bf16-rounded) inputs. The reference backward reads the flash
// forward's bf16 output, as the kernel does: D = rowsum(dO * O) from a rounded
// O is off by far more than the kernel's own error once the softmax is sharp.
void check_flash_variants(const AttnShape& s, double input_std) {
  namespace d = fg::ops::detail;
  Device gpu = Device::cuda(0);
  Qkv x = random_qkv(s, 41, DType::BF16, gpu, input_std);
  Generator gen(42);
  Tensor dout = Tensor::randn(x.q.shape(), gen, DType::BF16, gpu);
  Tensor q64 = f64(x.q), k64 = f64(x.k), v64 = f64(x.v), dout64 = f64(dout);
  fg::ops::AttentionOut ref = fg::ops::attention_forward(q64, k64, v64);
  const int hd = static_cast<int>(s.hd);
  ASSERT_TRUE(d::flash_attention_supported(x.q));
  fg::ops::AttentionOut fwd0;
  for (int variant = 0; variant < d::flash_attention_variant_count(hd, false); ++variant) {
    SCOPED_TRACE(std::string("forward ") + d::flash_attention_variant_name(hd, false, variant));
    fg::ops::AttentionOut r = poisoned_forward_outputs(s);
    d::flash_attention_forward_cuda(x.q, x.k, x.v, r.out, r.lse, variant);
    EXPECT_FALSE(fg::has_non_finite(r.out));
    EXPECT_FALSE(fg::has_non_finite(r.lse));
    EXPECT_TRUE(close_rel(r.out, ref.out, 1e-2)) << "out";
    EXPECT_TRUE(close_rel(r.lse, ref.lse, 1e-5)) << "lse";
    if (variant == 0) fwd0 = r;
  }
  fg::ops::AttentionGrads ref_g =
      fg::ops::attention_backward(dout64, q64, k64, v64, f64(fwd0.out), ref.lse);
  for (int variant = 0; variant < d::flash_attention_variant_count(hd, true); ++variant) {
    SCOPED_TRACE(std::string("backward ") + d::flash_attention_variant_name(hd, true, variant));
    fg::ops::AttentionGrads g = poisoned_grads(s);
    d::flash_attention_backward_cuda(dout, x.q, x.k, x.v, fwd0.out, fwd0.lse, g, variant);
    for (const Tensor* t : {&g.dq, &g.dk, &g.dv}) EXPECT_FALSE(fg::has_non_finite(*t));
    EXPECT_TRUE(close_rel(g.dq, ref_g.dq, 1e-2)) << "dq";
    EXPECT_TRUE(close_rel(g.dk, ref_g.dk, 1e-2)) << "dk";
    EXPECT_TRUE(close_rel(g.dv, ref_g.dv, 1e-2)) << "dv";
  }
}

TEST_P(AttentionFlash, EveryTilingMatchesCpu) {
  FG_REQUIRE_GPU();
  check_flash_variants(GetParam(), 1.0);
}

TEST_P(AttentionFlash, EveryTilingMatchesCpuSharpSoftmax) {
  FG_REQUIRE_GPU();
  check_flash_variants(GetParam(), 3.0);
}

// The public entries (which pick the flash kernels for these shapes) against
// the simple GPU kernels on the same bf16 inputs; both backwards read the
// flash forward's out and lse.
void check_against_simple(const AttnShape& s) {
  namespace d = fg::ops::detail;
  Device gpu = Device::cuda(0);
  Qkv x = random_qkv(s, 51, DType::BF16, gpu);
  Generator gen(52);
  Tensor dout = Tensor::randn(x.q.shape(), gen, DType::BF16, gpu);
  fg::ops::AttentionOut simple = poisoned_forward_outputs(s);
  d::attention_forward_cuda_simple(x.q, x.k, x.v, simple.out, simple.lse);

  poison_pool({x.q.shape(), {s.B, s.H, s.T}}, DType::BF16, gpu);
  fg::ops::AttentionOut r = fg::ops::attention_forward(x.q, x.k, x.v);
  fg::ops::AttentionGrads simple_g = poisoned_grads(s);
  d::attention_backward_cuda_simple(dout, x.q, x.k, x.v, r.out, r.lse, simple_g);
  EXPECT_FALSE(fg::has_non_finite(r.out));
  EXPECT_TRUE(close_rel(r.out, simple.out, 1e-2)) << "out";
  EXPECT_TRUE(close_rel(r.lse, simple.lse, 1e-5)) << "lse";
  poison_pool({x.q.shape(), x.k.shape(), x.v.shape()}, DType::BF16, gpu);
  fg::ops::AttentionGrads g = fg::ops::attention_backward(dout, x.q, x.k, x.v, r.out, r.lse);
  for (const Tensor* t : {&g.dq, &g.dk, &g.dv}) EXPECT_FALSE(fg::has_non_finite(*t));
  EXPECT_TRUE(close_rel(g.dq, simple_g.dq, 1e-2)) << "dq";
  EXPECT_TRUE(close_rel(g.dk, simple_g.dk, 1e-2)) << "dk";
  EXPECT_TRUE(close_rel(g.dv, simple_g.dv, 1e-2)) << "dv";
}

TEST_P(AttentionFlash, MatchesSimpleKernel) {
  FG_REQUIRE_GPU();
  check_against_simple(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionFlash, ::testing::ValuesIn(kFlashShapes),
                         [](const auto& info) { return shape_name(info.param); });

// Grids of several head groups (grid_order.h), forward and backward, MHA and GQA: the
// shapes above are one group each.
TEST(AttentionFlashEdge, ManyHeadGroupsMatchSimpleKernel) {
  FG_REQUIRE_GPU();
  const int sms = fg::cuda::sm_count();
  for (AttnShape s : {AttnShape{16, 1000, 8, 8, 64}, AttnShape{16, 1000, 16, 8, 128}}) {
    SCOPED_TRACE(shape_name(s));
    // The backward's grid (keys of 128, per kv head) is the smaller one.
    ASSERT_GT(fg::ops::detail::grid_groups((s.T + 127) / 128, s.B * s.Hkv, sms), 1);
    check_against_simple(s);
  }
}

TEST(AttentionFlashEdge, ForwardAndKeyGradientsAreDeterministic) {
  // Everything but dq (summed with atomics) is written by exactly one thread.
  FG_REQUIRE_GPU();
  AttnShape s{2, 333, 8, 2, 128};
  Device gpu = Device::cuda(0);
  Qkv x = random_qkv(s, 61, DType::BF16, gpu);
  Generator gen(62);
  Tensor dout = Tensor::randn(x.q.shape(), gen, DType::BF16, gpu);
  fg::ops::AttentionOut a = fg::ops::attention_forward(x.q, x.k, x.v);
  fg::ops::AttentionOut b = fg::ops::attention_forward(x.q, x.k, x.v);
  EXPECT_EQ(fg::max_abs_diff(a.out, b.out), 0.0);
  EXPECT_EQ(fg::max_abs_diff(a.lse, b.lse), 0.0);
  fg::ops::AttentionGrads ga = fg::ops::attention_backward(dout, x.q, x.k, x.v, a.out, a.lse);
  fg::ops::AttentionGrads gb = fg::ops::attention_backward(dout, x.q, x.k, x.v, a.out, a.lse);
  EXPECT_EQ(fg::max_abs_diff(ga.dk, gb.dk), 0.0);
  EXPECT_EQ(fg::max_abs_diff(ga.dv, gb.dv), 0.0);
  EXPECT_TRUE(close_rel(ga.dq, gb.dq, 1e-3));
}

TEST(AttentionFlashEdge, FutureKeysDoNotChangeEarlierRows) {
  FG_REQUIRE_GPU();
  AttnShape s{1, 200, 4, 2, 64};
  Device gpu = Device::cuda(0);
  Qkv x = random_qkv(s, 71, DType::BF16, gpu);
  fg::ops::AttentionOut before = fg::ops::attention_forward(x.q, x.k, x.v);
  const int64_t t0 = 70;  // inside a tile for every tiling
  Qkv noise = random_qkv(s, 72, DType::BF16, gpu, 5.0);
  Tensor k2 = x.k.clone(), v2 = x.v.clone();
  k2.slice(1, t0 + 1, s.T).copy_(noise.k.slice(1, t0 + 1, s.T));
  v2.slice(1, t0 + 1, s.T).copy_(noise.v.slice(1, t0 + 1, s.T));
  fg::ops::AttentionOut after = fg::ops::attention_forward(x.q, k2, v2);
  EXPECT_EQ(fg::max_abs_diff(before.out.slice(1, 0, t0 + 1), after.out.slice(1, 0, t0 + 1)), 0.0);
  EXPECT_EQ(fg::max_abs_diff(before.lse.slice(2, 0, t0 + 1), after.lse.slice(2, 0, t0 + 1)), 0.0);
  EXPECT_GT(fg::max_abs_diff(before.out.slice(1, t0 + 1, s.T), after.out.slice(1, t0 + 1, s.T)),
            1e-3);
}

TEST(AttentionFlashEdge, UnsupportedInputsAreAnError) {
  FG_REQUIRE_GPU();
  namespace d = fg::ops::detail;
  Device gpu = Device::cuda(0);
  Tensor q = Tensor::zeros({1, 4, 2, 64}, DType::F32, gpu);
  Tensor lse = Tensor::zeros({1, 2, 4}, DType::F32, gpu);
  EXPECT_FALSE(d::flash_attention_supported(q));
  EXPECT_FALSE(d::flash_attention_supported(Tensor::zeros({1, 4, 2, 96}, DType::BF16, gpu)));
  EXPECT_FG_ERROR(d::flash_attention_forward_cuda(q, q, q, q, lse),
                  "is not bf16 with head_dim 64 or 128");
  Tensor qb = q.to(DType::BF16);
  EXPECT_FG_ERROR(d::flash_attention_forward_cuda(qb, qb, qb, qb, lse, 99), "variant 99");
}

TEST(AttentionFlashEdge, MisalignedOperandsUseTheSimpleKernel) {
  // q one element into its buffer: the flash kernels' 16-byte copies cannot read it.
  FG_REQUIRE_GPU();
  namespace d = fg::ops::detail;
  AttnShape s{1, 33, 2, 1, 64};
  Device gpu = Device::cuda(0);
  Qkv x = random_qkv(s, 81, DType::BF16, gpu);
  Tensor buffer = Tensor::empty({x.q.numel() + 1}, DType::BF16, gpu);
  Tensor q = buffer.slice(0, 1, x.q.numel() + 1).view(x.q.shape());
  q.copy_(x.q);
  EXPECT_FALSE(d::flash_attention_aligned({&q}));
  fg::ops::AttentionOut r = fg::ops::attention_forward(q, x.k, x.v);
  fg::ops::AttentionOut ref = fg::ops::attention_forward(f64(x.q), f64(x.k), f64(x.v));
  EXPECT_TRUE(close_rel(r.out, ref.out, 1e-2));
  EXPECT_FG_ERROR(d::flash_attention_forward_cuda(q, x.k, x.v, r.out, r.lse),
                  "must start on 16-byte boundaries");
}
// The flash kernels undo RoPE as they write (dK in the backward kernel's epilogue, dQ in
// its conversion pass): against the definition on the CPU in f64 from the same bf16
// inputs and forward outputs, into a NaN-filled buffer (every element is written), and
// against the GPU's own composition (attention_backward, then RoPE's pass).
TEST(AttentionIntoQkvCuda, FlashMatchesTheDefinition) {
  FG_REQUIRE_GPU();
  struct Case {
    AttnShape s;
    int64_t rotary;
    bool per_batch;
  };
  for (const Case& c : {Case{{2, 77, 4, 2, 64}, 64, false}, Case{{2, 77, 4, 2, 64}, 32, true},
                        Case{{1, 200, 4, 4, 128}, 128, true}, Case{{3, 129, 4, 1, 128}, 64, false},
                        Case{{1, 1, 2, 1, 64}, 64, false}}) {
    const AttnShape& s = c.s;
    SCOPED_TRACE(shape_name(s) + " rotary " + std::to_string(c.rotary) +
                 (c.per_batch ? " positions (B, T)" : " positions (T)"));
    Device gpu = Device::cuda(0);
    Qkv x = random_qkv(s, 111, DType::BF16, gpu);
    Generator gen(112);
    Tensor dout = Tensor::randn(x.q.shape(), gen, DType::BF16, gpu);
    fg::ops::AttentionOut fwd = fg::ops::attention_forward(x.q, x.k, x.v);
    const Tensor pos = rope_positions(s, c.per_batch, 11, gpu);
    const Shape packed{s.B * s.T, (s.H + 2 * s.Hkv) * s.hd};
    Tensor dqkv = Tensor::full(packed, NAN, DType::BF16, gpu);
    fg::ops::attention_backward_into_qkv(dout, x.q, x.k, x.v, fwd.out, fwd.lse, pos, c.rotary, 1e4,
                                         dqkv);
    EXPECT_FALSE(fg::has_non_finite(dqkv));
    EXPECT_TRUE(close_rel(dqkv, packed_reference(dout, x, fwd, pos, c.rotary, 1e4), 1e-2));

    fg::ops::AttentionGrads g = fg::ops::attention_backward(dout, x.q, x.k, x.v, fwd.out, fwd.lse);
    Tensor composed = Tensor::empty(packed, DType::BF16, gpu);
    Tensor heads = composed.view({s.B, s.T, s.H + 2 * s.Hkv, s.hd});
    heads.slice(2, 0, s.H).copy_(fg::ops::rope_backward(g.dq, pos, c.rotary, 1e4));
    heads.slice(2, s.H, s.H + s.Hkv).copy_(fg::ops::rope_backward(g.dk, pos, c.rotary, 1e4));
    heads.slice(2, s.H + s.Hkv, s.H + 2 * s.Hkv).copy_(g.dv);
    EXPECT_TRUE(close_rel(dqkv, composed, 1e-2));
    // The v columns are the plain kernel's bits; q's and k's are rounded once, not twice.
    EXPECT_EQ(fg::max_abs_diff(dqkv.slice(1, (s.H + s.Hkv) * s.hd, packed[1]),
                               composed.slice(1, (s.H + s.Hkv) * s.hd, packed[1])),
              0.0);
  }
}

// Every tiling's epilogue and dQ pass undo RoPE alike (the mma.sync kernels run where
// there is no Hopper): against the definition, GQA with partial rotary and per-sequence
// positions.
TEST(AttentionIntoQkvCuda, EveryTilingMatchesTheDefinition) {
  FG_REQUIRE_GPU();
  namespace d = fg::ops::detail;
  for (const AttnShape& s : {AttnShape{2, 77, 4, 2, 64}, AttnShape{2, 70, 4, 1, 128}}) {
    Device gpu = Device::cuda(0);
    Qkv x = random_qkv(s, 131, DType::BF16, gpu);
    Generator gen(132);
    Tensor dout = Tensor::randn(x.q.shape(), gen, DType::BF16, gpu);
    fg::ops::AttentionOut fwd = fg::ops::attention_forward(x.q, x.k, x.v);
    const Tensor pos = rope_positions(s, true, 7, gpu);
    const Tensor reference = packed_reference(dout, x, fwd, pos, s.hd / 2, 1e4);
    const int hd = static_cast<int>(s.hd);
    for (int variant = 0; variant < d::flash_attention_variant_count(hd, true); ++variant) {
      SCOPED_TRACE(shape_name(s) + " " + d::flash_attention_variant_name(hd, true, variant));
      Tensor dqkv = Tensor::full(reference.shape(), NAN, DType::BF16, gpu);
      ASSERT_TRUE(d::flash_attention_backward_into_qkv_cuda(
          dout, x.q, x.k, x.v, fwd.out, fwd.lse, pos, s.hd / 2, 1e4, dqkv, Tensor(), variant));
      EXPECT_FALSE(fg::has_non_finite(dqkv));
      EXPECT_TRUE(close_rel(dqkv, reference, 1e-2));
    }
  }
}

// A check that could pass without the rotation would be no check: the same gradients
// with positions one further along differ in the q and k columns (and only there). A model
// makes its positions' RoPE table once per forward and passes it to every layer
// (ops::rope_table): the given table is the one read, with the bits of the table made inside.
TEST(AttentionIntoQkvCuda, PositionsMatter) {
  FG_REQUIRE_GPU();
  const AttnShape s{1, 64, 2, 2, 64};
  Device gpu = Device::cuda(0);
  Qkv x = random_qkv(s, 121, DType::BF16, gpu);
  Generator gen(122);
  Tensor dout = Tensor::randn(x.q.shape(), gen, DType::BF16, gpu);
  fg::ops::AttentionOut fwd = fg::ops::attention_forward(x.q, x.k, x.v);
  const Shape packed{s.T, (s.H + 2 * s.Hkv) * s.hd};
  const Tensor pos = rope_positions(s, false, 0, gpu), next = rope_positions(s, false, 1, gpu);
  auto run = [&](const Tensor& positions, const Tensor& table) {
    Tensor dqkv = Tensor::full(packed, NAN, DType::BF16, gpu);
    fg::ops::attention_backward_into_qkv(dout, x.q, x.k, x.v, fwd.out, fwd.lse, positions, 64, 1e4,
                                         dqkv, table);
    return dqkv;
  };
  const Tensor a = run(pos, Tensor()), b = run(next, Tensor());
  const int64_t qk = (s.H + s.Hkv) * s.hd;
  EXPECT_GT(fg::max_abs_diff(a.slice(1, 0, s.H * s.hd), b.slice(1, 0, s.H * s.hd)), 1e-2);
  EXPECT_GT(fg::max_abs_diff(a.slice(1, s.H * s.hd, qk), b.slice(1, s.H * s.hd, qk)), 1e-2);
  EXPECT_EQ(fg::max_abs_diff(a.slice(1, qk, packed[1]), b.slice(1, qk, packed[1])), 0.0);

  EXPECT_EQ(fg::max_abs_diff(run(pos, fg::ops::rope_table(pos, 64, 1e4)), a), 0.0);
  EXPECT_EQ(fg::max_abs_diff(run(pos, fg::ops::rope_table(next, 64, 1e4)), b), 0.0);
  EXPECT_FG_ERROR(run(pos, fg::ops::rope_table(pos, 32, 1e4)),
                  "attention_backward_into_qkv: rope_table is (64, 32) but expected contiguous "
                  "(64, 64) for positions (64,) and rotary_dim 64");
}

#endif  // FG_CUDA

TEST(AttentionCudaEdge, DeviceMismatchIsAnError) {
  FG_REQUIRE_GPU();
  Tensor q = Tensor::zeros({1, 4, 2, 8}, DType::F32, Device::cuda(0));
  Tensor k = Tensor::zeros({1, 4, 1, 8});
  EXPECT_FG_ERROR(fg::ops::attention_forward(q, k, k), "attention: q is on cuda:0 but k is on cpu");
}

}  // namespace
