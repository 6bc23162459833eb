// AdamW: a two-step example worked by hand, a plain f64 re-derivation of the
// header's formula, the multi-tensor entry, errors, and CUDA against the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/adamw/adamw.h"
#include "test_util.h"

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;
using fg::ops::AdamWHyper;
using fg::ops::AdamWTensors;

namespace {

AdamWTensors make_state(const Shape& shape, uint64_t seed, DType dtype = DType::F32,
                        Device device = Device::cpu(), bool decay = true) {
  Generator gen(seed);
  Tensor p = Tensor::randn(shape, gen, dtype, device);
  return {p, Tensor::zeros(shape, dtype, device), Tensor::zeros(shape, dtype, device),
          Tensor::zeros(shape, dtype, device), decay};
}

// The header's formula, element by element in f64, on host vectors.
struct HostState {
  std::vector<double> p, m, v;
};

void reference_step(HostState& s, const std::vector<double>& g, const AdamWHyper& h, bool decay) {
  double wd = decay ? h.weight_decay : 0.0;
  double bc1 = 1 - std::pow(h.beta1, h.step), bc2 = 1 - std::pow(h.beta2, h.step);
  for (size_t i = 0; i < g.size(); ++i) {
    s.m[i] = h.beta1 * s.m[i] + (1 - h.beta1) * g[i];
    s.v[i] = h.beta2 * s.v[i] + (1 - h.beta2) * g[i] * g[i];
    double update = h.lr * (s.m[i] / bc1) / (std::sqrt(s.v[i] / bc2) + h.eps);
    s.p[i] -= update + h.lr * wd * s.p[i];  // decay of the pre-update p
  }
}

TEST(AdamW, HandComputedTwoSteps) {
  // lr 0.1, betas (0.9, 0.95), eps 1e-8, wd 0.1; p = (1, -2, 0).
  // Step 1, g = (0.5, -1, 0): m = 0.1 g, v = 0.05 g^2, m^ = g, v^ = g^2, so
  //   p = 0.99 p - 0.1 g / (|g| + 1e-8) = (0.890000002, -1.880000001, 0).
  // Step 2, g = (-0.25, 0.5, 0): m = (0.02, -0.04, 0), v = (0.015, 0.06, 0),
  //   1 - 0.9^2 = 0.19, 1 - 0.95^2 = 0.0975,
  //   p[0] = 0.99 * 0.890000002 - (0.1 / 0.19) * 0.02 / (sqrt(0.015 / 0.0975) + 1e-8)
  //        = 0.88110000198 - 0.02683693... = 0.85426306...
  //   p[1] = 0.99 * -1.880000001 + (0.1 / 0.19) * 0.04 / (sqrt(0.06 / 0.0975) + 1e-8)
  //        = -1.86120000099 + 0.02683693... = -1.83436306...
  for (DType dtype : {DType::F64, DType::F32}) {
    Tensor p = Tensor::from_vector({1.0, -2.0, 0.0}, {3}, dtype);
    Tensor m = Tensor::zeros({3}, dtype), v = Tensor::zeros({3}, dtype);
    AdamWHyper h;
    h.lr = 0.1;
    h.beta1 = 0.9;
    h.beta2 = 0.95;
    h.eps = 1e-8;
    h.weight_decay = 0.1;
    h.step = 1;
    fg::ops::adamw_step(p, Tensor::from_vector({0.5, -1.0, 0.0}, {3}, dtype), m, v, h);
    double tol = dtype == DType::F64 ? 1e-12 : 1e-6;
    auto p1 = p.to_vector();
    EXPECT_NEAR(p1[0], 0.890000002, tol);
    EXPECT_NEAR(p1[1], -1.880000001, tol);
    EXPECT_EQ(p1[2], 0.0);
    EXPECT_NEAR(m.to_vector()[1], -0.1, tol);
    EXPECT_NEAR(v.to_vector()[1], 0.05, tol);
    h.step = 2;
    fg::ops::adamw_step(p, Tensor::from_vector({-0.25, 0.5, 0.0}, {3}, dtype), m, v, h);
    auto p2 = p.to_vector(), m2 = m.to_vector(), v2 = v.to_vector();
    EXPECT_NEAR(p2[0], 0.8542630578558273, tol);
    EXPECT_NEAR(p2[1], -1.8343630565237223, tol);
    EXPECT_EQ(p2[2], 0.0);
    EXPECT_NEAR(m2[0], 0.02, tol);
    EXPECT_NEAR(m2[1], -0.04, tol);
    EXPECT_NEAR(v2[0], 0.015, tol);
    EXPECT_NEAR(v2[1], 0.06, tol);
  }
}

TEST(AdamW, MatchesF64Rederivation) {
  for (DType dtype : {DType::F64, DType::F32}) {
    for (bool decay : {true, false}) {
      Shape shape{7, 13};
      AdamWTensors t = make_state(shape, 1, dtype);
      HostState ref{t.param.to_vector(), t.exp_avg.to_vector(), t.exp_avg_sq.to_vector()};
      AdamWHyper h;
      h.lr = 3e-3;
      h.weight_decay = 0.1;
      Generator gen(2);
      for (int64_t step = 1; step <= 5; ++step) {
        h.step = step;
        Tensor g = Tensor::randn(shape, gen, dtype, Device::cpu(), 0.0, 0.5);
        t.grad.copy_(g);
        fg::ops::adamw_step_multi({{t.param, t.grad, t.exp_avg, t.exp_avg_sq, decay}}, h);
        reference_step(ref, g.to_vector(), h, decay);
      }
      double tol = dtype == DType::F64 ? 1e-13 : 1e-6;
      Tensor ref_p = Tensor::from_vector(ref.p, shape, DType::F64);
      EXPECT_TRUE(close_rel(t.param, ref_p, tol));
      EXPECT_TRUE(close_rel(t.exp_avg, Tensor::from_vector(ref.m, shape, DType::F64), tol));
      EXPECT_TRUE(close_rel(t.exp_avg_sq, Tensor::from_vector(ref.v, shape, DType::F64), tol));
    }
  }
}

TEST(AdamW, SingleStepDecaysAndMultiSkipsDecayWhereAsked) {
  AdamWHyper h;
  h.lr = 1e-2;
  h.weight_decay = 0.5;
  AdamWTensors a = make_state({5, 3}, 3), b = make_state({5, 3}, 3);
  Generator gen(4);
  Tensor g = Tensor::randn({5, 3}, gen);
  a.grad.copy_(g);
  b.grad.copy_(g);
  // adamw_step always applies hyper.weight_decay; a multi entry with decay false
  // equals adamw_step with weight_decay 0.
  AdamWHyper no_decay = h;
  no_decay.weight_decay = 0;
  fg::ops::adamw_step(a.param, a.grad, a.exp_avg, a.exp_avg_sq, no_decay);
  b.decay = false;
  fg::ops::adamw_step_multi({b}, h);
  EXPECT_EQ(fg::max_abs_diff(a.param, b.param), 0.0);
  AdamWTensors c = make_state({5, 3}, 3), d = make_state({5, 3}, 3);
  c.grad.copy_(g);
  d.grad.copy_(g);
  fg::ops::adamw_step(c.param, c.grad, c.exp_avg, c.exp_avg_sq, h);
  fg::ops::adamw_step_multi({d}, h);
  EXPECT_EQ(fg::max_abs_diff(c.param, d.param), 0.0);
  EXPECT_GT(fg::max_abs_diff(a.param, c.param), 1e-4);
}

TEST(AdamW, ZeroGradientOnlyDecays) {
  AdamWHyper h;
  h.lr = 0.1;
  h.weight_decay = 0.2;
  Tensor p = Tensor::from_vector({2.0, -4.0}, {2}, DType::F64);
  Tensor z = Tensor::zeros({2}, DType::F64);
  fg::ops::adamw_step(p, z, z.clone(), z.clone(), h);
  EXPECT_NEAR(p.to_vector()[0], 2.0 * 0.98, 1e-15);
  EXPECT_NEAR(p.to_vector()[1], -4.0 * 0.98, 1e-15);
}

TEST(AdamW, Errors) {
  AdamWHyper h;
  Tensor p = Tensor::zeros({3, 4});
  Tensor s = Tensor::zeros({3, 4});
  EXPECT_FG_ERROR(fg::ops::adamw_step(p, Tensor::zeros({4, 3}), s, s.clone(), h),
                  "adamw: param is (3, 4) but grad is (4, 3)");
  EXPECT_FG_ERROR(fg::ops::adamw_step(p, s, Tensor::zeros({3, 4}, DType::F64), s.clone(), h),
                  "adamw: param is f32 but exp_avg is f64");
  EXPECT_FG_ERROR(fg::ops::adamw_step(p, s, s.clone(), Tensor::zeros({12}), h),
                  "adamw: param is (3, 4) but exp_avg_sq is (12,)");
  Tensor pb = Tensor::zeros({3, 4}, DType::BF16);
  EXPECT_FG_ERROR(fg::ops::adamw_step(pb, pb, pb, pb, h), "adamw: param is bf16");
  Tensor pt = Tensor::zeros({4, 3}).transpose(0, 1);
  EXPECT_FG_ERROR(fg::ops::adamw_step(pt, s, s.clone(), s.clone(), h), "is not contiguous");
  EXPECT_FG_ERROR(fg::ops::adamw_step(p, Tensor(), s, s.clone(), h), "adamw: grad is undefined");
  AdamWHyper bad = h;
  bad.step = 0;
  EXPECT_FG_ERROR(fg::ops::adamw_step(p, s, s.clone(), s.clone(), bad), "1-based");
  bad = h;
  bad.beta2 = 1.0;
  EXPECT_FG_ERROR(fg::ops::adamw_step(p, s, s.clone(), s.clone(), bad), "must lie in [0, 1)");
  // Multi: every entry names its index; all share dtype.
  AdamWTensors a = make_state({2}, 1), b = make_state({2}, 2, DType::F64);
  EXPECT_FG_ERROR(fg::ops::adamw_step_multi({a, b}, h), "adamw: param 1 is f64 but param 0 is f32");
  fg::ops::adamw_step_multi({}, h);  // nothing to do
}

// ---- CUDA against the CPU ----

// Sizes that fill no block or chunk evenly, plus one empty tensor.
const std::vector<Shape> kCudaShapes = {{1}, {7, 13}, {0}, {1000003}, {4097}, {33, 65}, {3, 5, 7}};

std::vector<AdamWTensors> make_group(DType dtype, Device device) {
  std::vector<AdamWTensors> group;
  for (size_t i = 0; i < kCudaShapes.size(); ++i)
    group.push_back(make_state(kCudaShapes[i], 100 + i, dtype, device, i % 2 == 0));
  return group;
}

void check_multi_matches_cpu(DType dtype, double tol) {
  Device gpu = Device::cuda(0);
  std::vector<AdamWTensors> cpu = make_group(dtype, Device::cpu());
  std::vector<AdamWTensors> cuda = make_group(dtype, gpu);
  AdamWHyper h;
  h.lr = 1e-3;
  h.weight_decay = 0.1;
  Generator gen(7);
  for (int64_t step = 1; step <= 4; ++step) {
    h.step = step;
    for (size_t i = 0; i < cpu.size(); ++i) {
      Tensor g = Tensor::randn(cpu[i].grad.shape(), gen, dtype, Device::cpu(), 0.0, 0.1);
      cpu[i].grad.copy_(g);
      cuda[i].grad.copy_(g);
    }
    fg::ops::adamw_step_multi(cpu, h);
    fg::ops::adamw_step_multi(cuda, h);
  }
  for (size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_FALSE(fg::has_non_finite(cuda[i].param)) << i;
    EXPECT_TRUE(close_rel(cuda[i].param, cpu[i].param, tol)) << "param " << i;
    EXPECT_TRUE(close_rel(cuda[i].exp_avg, cpu[i].exp_avg, tol)) << "exp_avg " << i;
    EXPECT_TRUE(close_rel(cuda[i].exp_avg_sq, cpu[i].exp_avg_sq, tol)) << "exp_avg_sq " << i;
  }
}

TEST(AdamWCuda, MultiF32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_multi_matches_cpu(DType::F32, 1e-5);
}

TEST(AdamWCuda, MultiF64MatchesCpu) {
  FG_REQUIRE_GPU();
  check_multi_matches_cpu(DType::F64, 1e-12);
}

TEST(AdamWCuda, ManyTensorsInOneLaunch) {
  FG_REQUIRE_GPU();
  // 150 tensors of sizes around the chunk size: every block must find its own.
  std::vector<AdamWTensors> cpu, cuda;
  for (int i = 0; i < 150; ++i) {
    Shape shape{(i * 977) % 9000 + (i % 7 == 0 ? 0 : 1)};
    cpu.push_back(make_state(shape, 500 + i, DType::F32, Device::cpu(), i % 3 != 0));
    cuda.push_back(make_state(shape, 500 + i, DType::F32, Device::cuda(0), i % 3 != 0));
  }
  Generator gen(8);
  for (size_t i = 0; i < cpu.size(); ++i) {
    Tensor g = Tensor::randn(cpu[i].grad.shape(), gen, DType::F32, Device::cpu(), 0.0, 0.1);
    cpu[i].grad.copy_(g);
    cuda[i].grad.copy_(g);
  }
  AdamWHyper h;
  h.lr = 1e-2;
  h.weight_decay = 0.3;
  fg::ops::adamw_step_multi(cpu, h);
  fg::ops::adamw_step_multi(cuda, h);
  for (size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_TRUE(close_rel(cuda[i].param, cpu[i].param, 1e-5)) << i;
    EXPECT_TRUE(close_rel(cuda[i].exp_avg_sq, cpu[i].exp_avg_sq, 1e-5)) << i;
  }
}

TEST(AdamWCuda, SingleStepMatchesCpu) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  AdamWTensors c = make_state({123, 45}, 9);
  Generator gen(10);
  c.grad.copy_(Tensor::randn({123, 45}, gen));
  c.exp_avg.copy_(Tensor::randn({123, 45}, gen, DType::F32, Device::cpu(), 0.0, 0.01));
  c.exp_avg_sq.copy_(Tensor::uniform({123, 45}, gen, 0.0, 1e-3));
  AdamWTensors g{c.param.to(gpu), c.grad.to(gpu), c.exp_avg.to(gpu), c.exp_avg_sq.to(gpu)};
  AdamWHyper h;
  h.lr = 2e-3;
  h.weight_decay = 0.1;
  h.step = 17;
  fg::ops::adamw_step(c.param, c.grad, c.exp_avg, c.exp_avg_sq, h);
  fg::ops::adamw_step(g.param, g.grad, g.exp_avg, g.exp_avg_sq, h);
  EXPECT_TRUE(close_rel(g.param, c.param, 1e-5));
  EXPECT_TRUE(close_rel(g.exp_avg, c.exp_avg, 1e-5));
  EXPECT_TRUE(close_rel(g.exp_avg_sq, c.exp_avg_sq, 1e-5));
}

TEST(AdamWCuda, NonFiniteGradientReachesOnlyItsElement) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  AdamWTensors g = make_state({10}, 11, DType::F32, gpu);
  g.grad.slice(0, 4, 5).fill_(NAN);
  AdamWHyper h;
  fg::ops::adamw_step_multi({g}, h);
  EXPECT_TRUE(fg::has_non_finite(g.param.slice(0, 4, 5)));
  EXPECT_FALSE(fg::has_non_finite(g.param.slice(0, 0, 4)));
  EXPECT_FALSE(fg::has_non_finite(g.param.slice(0, 5, 10)));
}

TEST(AdamWCuda, MixedDevicesAreAnError) {
  FG_REQUIRE_GPU();
  AdamWTensors a = make_state({4}, 1), b = make_state({4}, 2, DType::F32, Device::cuda(0));
  AdamWHyper h;
  EXPECT_FG_ERROR(fg::ops::adamw_step_multi({a, b}, h),
                  "adamw: param 1 is on cuda:0 but param 0 is on cpu");
  AdamWTensors c = make_state({4}, 3);
  c.grad = c.grad.to(Device::cuda(0));
  EXPECT_FG_ERROR(fg::ops::adamw_step_multi({c}, h),
                  "adamw: param 0 is on cpu but grad is on cuda:0");
}

}  // namespace
