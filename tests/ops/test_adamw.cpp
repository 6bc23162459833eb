// AdamW: a two-step example worked by hand, a plain f64 re-derivation of the
// header's formula, the multi-tensor entry, the step values read from tensors
// (clipping inside the update, the non-finite skip), the bf16 parameter copies,
// errors, CUDA against the CPU, and a step captured in a CUDA graph.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "ops/adamw/adamw.h"
#include "ops/grad_norm/grad_norm.h"
#include "test_util.h"

#ifdef FG_CUDA
#include "core/cuda_utils.h"
#endif

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;
using fg::ops::AdamWHyper;
using fg::ops::AdamWStepInputs;
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

// ---- Step values read from tensors ----

std::vector<AdamWTensors> clone_group(const std::vector<AdamWTensors>& group) {
  std::vector<AdamWTensors> out;
  for (const AdamWTensors& e : group)
    out.push_back(
        {e.param.clone(), e.grad.clone(), e.exp_avg.clone(), e.exp_avg_sq.clone(), e.decay});
  return out;
}

std::vector<Tensor> grads_of(const std::vector<AdamWTensors>& group) {
  std::vector<Tensor> g;
  for (const AdamWTensors& e : group) g.push_back(e.grad);
  return g;
}

// Parameters and both states equal bit for bit (to_vector is exact for f32 and f64).
void expect_same(const std::vector<AdamWTensors>& a, const std::vector<AdamWTensors>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].param.to_vector(), b[i].param.to_vector()) << "param " << i;
    EXPECT_EQ(a[i].exp_avg.to_vector(), b[i].exp_avg.to_vector()) << "exp_avg " << i;
    EXPECT_EQ(a[i].exp_avg_sq.to_vector(), b[i].exp_avg_sq.to_vector()) << "exp_avg_sq " << i;
  }
}

void expect_close(const std::vector<AdamWTensors>& a, const std::vector<AdamWTensors>& b,
                  double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(close_rel(a[i].param, b[i].param, tol)) << "param " << i;
    EXPECT_TRUE(close_rel(a[i].exp_avg, b[i].exp_avg, tol)) << "exp_avg " << i;
    EXPECT_TRUE(close_rel(a[i].exp_avg_sq, b[i].exp_avg_sq, tol)) << "exp_avg_sq " << i;
  }
}

// A few parameters of odd sizes with random gradients and states (as after
// earlier steps), decay on every other one.
std::vector<AdamWTensors> make_stepped_group(DType dtype, Device device, uint64_t seed,
                                             const std::vector<Shape>& shapes) {
  std::vector<AdamWTensors> group;
  Generator gen(seed);
  for (size_t i = 0; i < shapes.size(); ++i) {
    const Shape& s = shapes[i];
    group.push_back({Tensor::randn(s, gen, dtype, device),
                     Tensor::randn(s, gen, dtype, device, 0.0, 0.3),
                     Tensor::randn(s, gen, dtype, device, 0.0, 0.01),
                     Tensor::uniform(s, gen, 0.0, 1e-3, dtype, device), i % 2 == 0});
  }
  return group;
}

const std::vector<Shape> kSmallShapes = {{1}, {7, 13}, {0}, {33, 65}, {3, 5, 7}, {4097}};

Tensor lr_step_of(double lr, int64_t step, Device device = Device::cpu()) {
  Tensor t = Tensor::empty({2}, DType::F64, device);
  t.copy_(Tensor::from_vector({lr, static_cast<double>(step)}, {2}, DType::F64));
  return t;
}

AdamWHyper test_hyper() {
  AdamWHyper h;
  h.lr = 3e-3;
  h.step = 5;
  h.weight_decay = 0.1;
  return h;
}

TEST(AdamWStepInputs, LrAndStepAreReadFromTheTensor) {
  for (DType dtype : {DType::F32, DType::F64}) {
    std::vector<AdamWTensors> host = make_stepped_group(dtype, Device::cpu(), 1, kSmallShapes);
    std::vector<AdamWTensors> dev = clone_group(host);
    AdamWHyper h = test_hyper();
    AdamWStepInputs in;
    in.lr_step = lr_step_of(h.lr, h.step);
    AdamWHyper ignored = h;  // lr and step of hyper play no part
    ignored.lr = 99;
    ignored.step = 0;
    fg::ops::adamw_step_multi(host, h, in);
    fg::ops::adamw_step_multi(dev, ignored, in);
    fg::ops::adamw_step_multi(host, h);
    fg::ops::adamw_step_multi(dev, ignored, in);
    expect_same(host, dev);
    // New values in the same tensor: the update follows them.
    in.lr_step.copy_(Tensor::from_vector({1e-2, 9}, {2}, DType::F64));
    h.lr = 1e-2;
    h.step = 9;
    fg::ops::adamw_step_multi(host, h);
    fg::ops::adamw_step_multi(dev, ignored, in);
    expect_same(host, dev);
    // A finite norm and loss without max_norm, or a norm under max_norm, change nothing.
    in.grad_norm = Tensor::full({}, 2.5);
    in.loss = Tensor::full({}, 3.25, DType::F64);
    fg::ops::adamw_step_multi(host, h);
    fg::ops::adamw_step_multi(dev, ignored, in);
    in.max_norm = 2.5;
    fg::ops::adamw_step_multi(host, h);
    fg::ops::adamw_step_multi(dev, ignored, in);
    expect_same(host, dev);
  }
}

// clip_grad_norm then the update, against the same clipping inside the update.
void check_clip_in_update(Device device) {
  for (DType dtype : {DType::F32, DType::F64}) {
    std::vector<AdamWTensors> clipped = make_stepped_group(dtype, device, 2, kSmallShapes);
    std::vector<AdamWTensors> exact = clone_group(clipped), from_op = clone_group(clipped);
    std::vector<Tensor> grads_before = grads_of(clone_group(clipped));
    AdamWHyper h = test_hyper();
    double max_norm = 0.5;
    double norm = fg::ops::clip_grad_norm(grads_of(clipped), max_norm);
    ASSERT_GT(norm, 2 * max_norm);
    fg::ops::adamw_step_multi(clipped, h);
    AdamWStepInputs in{lr_step_of(h.lr, h.step, device), Tensor(), Tensor(), max_norm};
    // The norm in f64, as clip_grad_norm has it: the same f32 scale, the same bits.
    in.grad_norm = Tensor::full({}, norm, DType::F64, device);
    fg::ops::adamw_step_multi(exact, h, in);
    expect_same(clipped, exact);
    // grad_norm's own () (f32 for f32 gradients): within its rounding.
    in.grad_norm = fg::ops::grad_norm(grads_of(from_op));
    fg::ops::adamw_step_multi(from_op, h, in);
    expect_close(clipped, from_op, dtype == DType::F32 ? 1e-6 : 1e-12);
    // The gradients themselves are left as they were.
    for (size_t i = 0; i < exact.size(); ++i) {
      EXPECT_EQ(exact[i].grad.to_vector(), grads_before[i].to_vector()) << i;
      EXPECT_EQ(from_op[i].grad.to_vector(), grads_before[i].to_vector()) << i;
    }
  }
}

TEST(AdamWStepInputs, ClipInUpdateMatchesClipGradNorm) {
  check_clip_in_update(Device::cpu());
}

// A NaN or inf norm or loss: params and states keep every bit.
void check_non_finite_skips(Device device) {
  for (double bad : {NAN, INFINITY, -INFINITY}) {
    for (bool in_loss : {false, true}) {
      std::vector<AdamWTensors> group = make_stepped_group(DType::F32, device, 3, kSmallShapes);
      std::vector<AdamWTensors> before = clone_group(group);
      AdamWStepInputs in{lr_step_of(1e-2, 3, device), Tensor::full({}, 1.5, DType::F32, device),
                         Tensor::full({}, 2.0, DType::F32, device), in_loss ? 0.0 : 1.0};
      (in_loss ? in.loss : in.grad_norm).fill_(bad);
      fg::ops::adamw_step_multi(group, test_hyper(), in);
      expect_same(group, before);
      // The same call with finite values does update.
      (in_loss ? in.loss : in.grad_norm).fill_(1.5);
      fg::ops::adamw_step_multi(group, test_hyper(), in);
      EXPECT_GT(fg::max_abs_diff(group[1].param, before[1].param), 0.0);
    }
  }
}

TEST(AdamWStepInputs, NonFiniteNormOrLossSkipsTheUpdate) {
  check_non_finite_skips(Device::cpu());
}

// Entries with a bf16 copy get the updated parameter rounded, bit for bit as
// Tensor::to rounds it; a skipped update leaves the copies alone too.
void check_param_copies(Device device) {
  std::vector<AdamWTensors> group = make_stepped_group(DType::F32, device, 4, kSmallShapes);
  for (size_t i = 0; i < group.size(); i += 2)
    group[i].param_copy = Tensor::full(group[i].param.shape(), NAN, DType::BF16, device);
  std::vector<AdamWTensors> plain = clone_group(group);
  AdamWStepInputs in{lr_step_of(1e-2, 3, device), Tensor::full({}, 1.5, DType::F32, device),
                     Tensor(), 1.0};
  fg::ops::adamw_step_multi(group, test_hyper(), in);
  fg::ops::adamw_step_multi(plain, test_hyper(), in);
  expect_same(group, plain);  // the copies change nothing else
  for (size_t i = 0; i < group.size(); i += 2) {
    EXPECT_EQ(fg::max_abs_diff(group[i].param_copy, group[i].param.to(DType::BF16)), 0.0) << i;
    EXPECT_EQ(fg::has_non_finite(group[i].param_copy), false) << i;
  }
  Tensor kept = group[2].param_copy.clone();
  in.grad_norm.fill_(NAN);
  fg::ops::adamw_step_multi(group, test_hyper(), in);
  EXPECT_EQ(fg::max_abs_diff(group[2].param_copy, kept), 0.0);
}

TEST(AdamWStepInputs, ParamCopiesGetTheRoundedUpdate) { check_param_copies(Device::cpu()); }

TEST(AdamW, ParamCopyErrors) {
  AdamWHyper h;
  AdamWTensors e = make_state({3, 4}, 1);
  e.param_copy = Tensor::zeros({3, 4});
  EXPECT_FG_ERROR(fg::ops::adamw_step_multi({e}, h),
                  "adamw: param 0 is f32 and its copy f32 but copies are bf16 of f32 parameters");
  e.param_copy = Tensor::zeros({12}, DType::BF16);
  EXPECT_FG_ERROR(fg::ops::adamw_step_multi({e}, h),
                  "adamw: param 0 is (3, 4) but its copy is (12,)");
  AdamWTensors d = make_state({3, 4}, 1, DType::F64);
  d.param_copy = Tensor::zeros({3, 4}, DType::BF16);
  EXPECT_FG_ERROR(fg::ops::adamw_step_multi({d}, h), "adamw: param 0 is f64 and its copy bf16");
}

TEST(AdamWStepInputs, Errors) {
  std::vector<AdamWTensors> g = {make_state({3}, 1)};
  AdamWHyper h;
  auto step = [&](AdamWStepInputs in) { fg::ops::adamw_step_multi(g, h, in); };
  EXPECT_FG_ERROR(step({}), "adamw: lr_step is undefined");
  EXPECT_FG_ERROR(step({Tensor::zeros({3}, DType::F64)}),
                  "adamw: lr_step is (3,) f64 cpu but must be (2) f64");
  EXPECT_FG_ERROR(step({Tensor::zeros({2})}), "adamw: lr_step is (2,) f32 cpu but must be (2) f64");
  Tensor lr_step = lr_step_of(1e-3, 1);
  EXPECT_FG_ERROR(step({lr_step, Tensor::zeros({2})}),
                  "adamw: grad_norm is (2,) f32 cpu but must be one f32 or f64 element");
  EXPECT_FG_ERROR(step({lr_step, Tensor(), Tensor::zeros({}, DType::BF16)}),
                  "adamw: loss is () bf16 cpu but must be one f32 or f64 element");
  EXPECT_FG_ERROR(step({lr_step, Tensor(), Tensor(), 1.0}),
                  "adamw: max_norm is 1 but grad_norm is undefined");
  EXPECT_FG_ERROR(step({lr_step, Tensor::zeros({}), Tensor(), -1.0}), "adamw: max_norm is -1");
  fg::ops::adamw_step_multi({}, h, {});  // nothing to do
  h.beta1 = 1.0;
  EXPECT_FG_ERROR(step({lr_step}), "must lie in [0, 1)");
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

TEST(AdamWStepInputsCuda, MatchCpuOverStepsWithClipping) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  for (DType dtype : {DType::F32, DType::F64}) {
    std::vector<AdamWTensors> cpu = make_stepped_group(dtype, Device::cpu(), 4, kCudaShapes);
    std::vector<AdamWTensors> cuda = make_stepped_group(dtype, gpu, 4, kCudaShapes);
    AdamWHyper h = test_hyper();
    AdamWStepInputs in_cpu{lr_step_of(0, 1), Tensor(), Tensor::full({}, 2.0), 1.0};
    AdamWStepInputs in_gpu{lr_step_of(0, 1, gpu), Tensor(), Tensor::full({}, 2.0, DType::F32, gpu),
                           1.0};
    for (int64_t step = 1; step <= 3; ++step) {
      Tensor values =
          Tensor::from_vector({1e-3 * step, static_cast<double>(step)}, {2}, DType::F64);
      in_cpu.lr_step.copy_(values);
      in_gpu.lr_step.copy_(values);
      in_cpu.grad_norm = fg::ops::grad_norm(grads_of(cpu));
      in_gpu.grad_norm = fg::ops::grad_norm(grads_of(cuda));
      ASSERT_GT(in_cpu.grad_norm.item(), 1.0);  // clipping is on
      fg::ops::adamw_step_multi(cpu, h, in_cpu);
      fg::ops::adamw_step_multi(cuda, h, in_gpu);
    }
    expect_close(cuda, cpu, dtype == DType::F32 ? 1e-5 : 1e-12);
  }
}

TEST(AdamWStepInputsCuda, ClipInUpdateMatchesClipGradNorm) {
  FG_REQUIRE_GPU();
  check_clip_in_update(Device::cuda(0));
}

TEST(AdamWStepInputsCuda, NonFiniteNormOrLossSkipsTheUpdate) {
  FG_REQUIRE_GPU();
  check_non_finite_skips(Device::cuda(0));
}

TEST(AdamWStepInputsCuda, ParamCopiesGetTheRoundedUpdate) {
  FG_REQUIRE_GPU();
  check_param_copies(Device::cuda(0));
}

TEST(AdamWStepInputsCuda, MoreTensorsThanOnePack) {
  FG_REQUIRE_GPU();
  // 600 small tensors (one launch holds 256), some empty, some crossing a chunk.
  std::vector<Shape> shapes;
  for (int i = 0; i < 600; ++i) shapes.push_back({(i * 977) % 5000 + (i % 13 == 0 ? 0 : 1)});
  std::vector<AdamWTensors> cpu = make_stepped_group(DType::F32, Device::cpu(), 5, shapes);
  std::vector<AdamWTensors> cuda = make_stepped_group(DType::F32, Device::cuda(0), 5, shapes);
  AdamWHyper h = test_hyper();
  fg::ops::adamw_step_multi(
      cpu, h, {lr_step_of(2e-3, 4), fg::ops::grad_norm(grads_of(cpu)), Tensor(), 1.0});
  fg::ops::adamw_step_multi(
      cuda, h,
      {lr_step_of(2e-3, 4, Device::cuda(0)), fg::ops::grad_norm(grads_of(cuda)), Tensor(), 1.0});
  expect_close(cuda, cpu, 1e-5);
  // The host entry, unclipped, over the packs too.
  fg::ops::adamw_step_multi(cpu, h);
  fg::ops::adamw_step_multi(cuda, h);
  expect_close(cuda, cpu, 1e-5);
}

TEST(AdamWStepInputsCuda, InputsOnAnotherDeviceAreAnError) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  std::vector<AdamWTensors> g = {make_state({3}, 1, DType::F32, gpu)};
  AdamWHyper h;
  EXPECT_FG_ERROR(fg::ops::adamw_step_multi(g, h, {lr_step_of(1e-3, 1)}),
                  "adamw: lr_step is on cpu but param 0 is on cuda:0");
  EXPECT_FG_ERROR(fg::ops::adamw_step_multi(g, h, {lr_step_of(1e-3, 1, gpu), Tensor::ones({})}),
                  "adamw: grad_norm is on cpu but param 0 is on cuda:0");
}

#ifdef FG_CUDA
// A CUDA graph captured from fusegpt's stream; destroyed with the test.
class CapturedGraph {
 public:
  explicit CapturedGraph(const std::function<void()>& work) {
    cudaStream_t stream = fg::cuda::stream();
    FG_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
    try {
      work();
    } catch (...) {
      cudaStreamEndCapture(stream, &graph_);
      throw;
    }
    FG_CUDA_CHECK(cudaStreamEndCapture(stream, &graph_));
    FG_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
  }
  ~CapturedGraph() {
    if (exec_) cudaGraphExecDestroy(exec_);
    if (graph_) cudaGraphDestroy(graph_);
  }
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;

  void launch() { FG_CUDA_CHECK(cudaGraphLaunch(exec_, fg::cuda::stream())); }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

TEST(AdamWStepInputsCuda, CapturedStepReplaysLikeEagerCalls) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  // Everything the graph reads or writes exists before the capture.
  std::vector<AdamWTensors> graphed = make_stepped_group(DType::F32, gpu, 6, kCudaShapes);
  std::vector<AdamWTensors> eager = clone_group(graphed);
  std::vector<AdamWTensors> initial = clone_group(graphed);
  AdamWHyper h = test_hyper();
  const double max_norm = 1.0;
  Tensor lr_step = lr_step_of(0, 1, gpu), eager_lr_step = lr_step_of(0, 1, gpu);
  Tensor loss = Tensor::full({}, 2.0, DType::F32, gpu);
  Tensor norm_out = Tensor::zeros({}, DType::F32, gpu);  // the step's norm, for the host to read
  std::vector<Tensor> grads = grads_of(graphed);

  CapturedGraph graph([&] {
    // The norm is a graph allocation: it must die inside the capture.
    Tensor norm = fg::ops::grad_norm(grads);
    norm_out.copy_(norm);
    fg::ops::adamw_step_multi(graphed, h, {lr_step, norm, loss, max_norm});
  });
  expect_same(graphed, initial);  // capturing ran nothing

  for (int64_t step = 1; step <= 2; ++step) {
    // New values for the replay, written outside the capture.
    Tensor values = Tensor::from_vector({2e-3 / step, static_cast<double>(step)}, {2}, DType::F64);
    lr_step.copy_(values);
    eager_lr_step.copy_(values);
    graph.launch();
    Tensor norm = fg::ops::grad_norm(grads_of(eager));
    fg::ops::adamw_step_multi(eager, h, {eager_lr_step, norm, loss, max_norm});
    EXPECT_EQ(norm_out.item(), norm.item()) << step;
    ASSERT_GT(norm.item(), max_norm);  // clipping is on
    expect_same(graphed, eager);
  }
  EXPECT_GT(fg::max_abs_diff(graphed[1].param, initial[1].param), 0.0);
  // A non-finite loss written before a replay skips that update.
  std::vector<AdamWTensors> before = clone_group(graphed);
  loss.fill_(NAN);
  graph.launch();
  expect_same(graphed, before);
}
#endif

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
