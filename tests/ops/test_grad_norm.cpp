// Global gradient norm and clipping: known values, f64 accumulation, PyTorch's
// clip coefficient, non-finite norms, the device-tensor forms (grad_norm,
// scale_grads by a tensor), errors, and CUDA against the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/grad_norm/grad_norm.h"
#include "test_util.h"

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;
using fg::ops::clip_grad_norm;
using fg::ops::global_grad_norm;
using fg::ops::grad_norm;
using fg::ops::GradNormInBackward;
using fg::ops::scale_grads;

namespace {

std::vector<Tensor> clones(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(t.defined() ? t.clone() : Tensor());
  return out;
}

TEST(GradNorm, KnownValuesOverDtypesAndTensors) {
  EXPECT_EQ(global_grad_norm({Tensor::from_vector({3, 4}, {2})}), 5.0);
  // sqrt(1 + 4 + 4 + 16 + 4 + 16 + 4) = 7 over an f32, an f64 and a bf16 tensor;
  // undefined entries (parameters without a gradient) are skipped.
  std::vector<Tensor> g = {Tensor::from_vector({1, 2}, {2}), Tensor(),
                           Tensor::from_vector({-2, 4}, {1, 2}, DType::F64),
                           Tensor::from_vector({2, -4, 2}, {3}, DType::BF16)};
  EXPECT_EQ(global_grad_norm(g), 7.0);
  EXPECT_EQ(global_grad_norm({}), 0.0);
  EXPECT_EQ(global_grad_norm({Tensor::zeros({0})}), 0.0);
}

TEST(GradNorm, StridedGradientsAreRead) {
  Tensor t = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_DOUBLE_EQ(global_grad_norm({t.transpose(0, 1)}), std::sqrt(91.0));
  EXPECT_DOUBLE_EQ(global_grad_norm({t.slice(1, 1, 2)}), std::sqrt(29.0));
}

TEST(GradNorm, AccumulatesInF64) {
  // 2^24 + 1 ones: an f32 running sum stops at 2^24.
  int64_t n = (int64_t{1} << 24) + 1;
  EXPECT_EQ(global_grad_norm({Tensor::ones({n})}), std::sqrt(static_cast<double>(n)));
}

TEST(GradNorm, ClipScalesLikePyTorch) {
  std::vector<Tensor> g = {Tensor::from_vector({3}, {1}),
                           Tensor::from_vector({4}, {1}, DType::F64)};
  double norm = clip_grad_norm(g, 1.0);
  EXPECT_EQ(norm, 5.0);  // the norm before clipping
  double coef = 1.0 / (5.0 + 1e-6);
  EXPECT_NEAR(g[0].item(), 3 * coef, 1e-7);
  EXPECT_DOUBLE_EQ(g[1].item(), 4 * coef);
  EXPECT_NEAR(global_grad_norm(g), 1.0, 1e-6);
  // At or below max_norm nothing changes.
  std::vector<Tensor> h = {Tensor::from_vector({3, 4}, {2})};
  EXPECT_EQ(clip_grad_norm(h, 5.0), 5.0);
  EXPECT_EQ(h[0].to_vector(), (std::vector<double>{3, 4}));
  EXPECT_EQ(clip_grad_norm(h, 10.0), 5.0);
  EXPECT_EQ(h[0].to_vector(), (std::vector<double>{3, 4}));
}

TEST(GradNorm, NonFiniteNormLeavesGradientsAlone) {
  for (double bad : {NAN, INFINITY}) {
    std::vector<Tensor> g = {Tensor::from_vector({3, 4}, {2}),
                             Tensor::from_vector({1, bad}, {2}, DType::F64)};
    double norm = clip_grad_norm(g, 1.0);
    if (std::isnan(bad)) {
      EXPECT_TRUE(std::isnan(norm));
    } else {
      EXPECT_EQ(norm, INFINITY);
    }
    EXPECT_EQ(g[0].to_vector(), (std::vector<double>{3, 4}));
    EXPECT_EQ(g[1].to_vector()[0], 1.0);
  }
}

TEST(GradNorm, ScaleGradsEveryDtype) {
  std::vector<Tensor> g = {Tensor::from_vector({1, -2}, {2}),
                           Tensor::from_vector({3}, {1}, DType::F64),
                           Tensor::from_vector({0.5, 8}, {2}, DType::BF16), Tensor()};
  scale_grads(g, 0.5);
  EXPECT_EQ(g[0].to_vector(), (std::vector<double>{0.5, -1}));
  EXPECT_EQ(g[1].to_vector(), (std::vector<double>{1.5}));
  EXPECT_EQ(g[2].to_vector(), (std::vector<double>{0.25, 4}));
}

TEST(GradNorm, TensorNormMatchesHostNorm) {
  // f32 (or mixed) gradients give an f32 (), f64 ones an f64 () holding the f64 result.
  std::vector<Tensor> mixed = {Tensor::from_vector({1, 2}, {2}), Tensor(),
                               Tensor::from_vector({-2, 4}, {1, 2}, DType::F64),
                               Tensor::from_vector({2, -4, 2}, {3}, DType::BF16)};
  Tensor n = grad_norm(mixed);
  EXPECT_EQ(n.shape(), Shape{});
  EXPECT_EQ(n.dtype(), DType::F32);
  EXPECT_EQ(n.device(), Device::cpu());
  EXPECT_EQ(n.item(), 7.0);
  Generator gen(3);
  std::vector<Tensor> f64 = {Tensor::randn({7, 13}, gen, DType::F64),
                             Tensor::randn({5}, gen, DType::F64)};
  Tensor n64 = grad_norm(f64);
  EXPECT_EQ(n64.dtype(), DType::F64);
  EXPECT_EQ(n64.item(), global_grad_norm(f64));
  std::vector<Tensor> f32 = {Tensor::randn({7, 13}, gen), Tensor::randn({5}, gen)};
  EXPECT_EQ(grad_norm(f32).item(), static_cast<double>(static_cast<float>(global_grad_norm(f32))));
  EXPECT_EQ(grad_norm({}).item(), 0.0);
  EXPECT_EQ(grad_norm({Tensor::zeros({0})}).item(), 0.0);
}

TEST(GradNorm, ScaleGradsByTensor) {
  Generator gen(4);
  std::vector<Tensor> g = {Tensor::randn({33}, gen), Tensor::randn({3, 5}, gen, DType::F64),
                           Tensor::randn({9}, gen, DType::BF16), Tensor()};
  std::vector<Tensor> by_double = clones(g), before = clones(g);
  for (DType dtype : {DType::F32, DType::F64}) {
    scale_grads(g, Tensor::full({}, 1.0, dtype));  // no change at all
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(g[i].to_vector(), before[i].to_vector()) << i;
  }
  // 0.5 as a tensor is 0.5 as a double, bit for bit.
  scale_grads(g, Tensor::full({}, 0.5, DType::F64));
  scale_grads(by_double, 0.5);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(g[i].to_vector(), by_double[i].to_vector()) << i;
    EXPECT_NE(g[i].to_vector(), before[i].to_vector()) << i;
  }
  scale_grads(g, Tensor::full({1}, -2.0));  // any one-element tensor
  EXPECT_NEAR(g[0].to_vector()[0], -before[0].to_vector()[0], 1e-6);
}

TEST(GradNorm, InBackwardEqualsOnePass) {
  Generator gen(3);
  std::vector<Tensor> g = {Tensor::randn({7, 13}, gen), Tensor(),
                           Tensor::randn({5}, gen, DType::F64),
                           Tensor::randn({40}, gen, DType::BF16)};
  GradNormInBackward norm(g);
  EXPECT_EQ(norm.finish().item(), grad_norm(g).item());  // no pass started: all counted at finish
  norm.ready(0);                                         // outside a pass: ignored
  norm.start();
  norm.ready(3);
  norm.ready(1);   // undefined: skipped
  norm.ready(3);   // counted once
  norm.ready(99);  // no such gradient
  scale_grads(g, 2.0);
  EXPECT_EQ(norm.finish().item(), grad_norm(g).item());
  EXPECT_EQ(norm.finish().dtype(), DType::F32);
  EXPECT_EQ(GradNormInBackward({Tensor()}).finish().item(), 0.0);
}

TEST(GradNorm, Errors) {
  EXPECT_FG_ERROR(global_grad_norm({Tensor::zeros({2}), Tensor::zeros({3}, DType::I32)}),
                  "global_grad_norm: grad 1 is i32");
  Tensor t = Tensor::zeros({2, 3});
  EXPECT_FG_ERROR(scale_grads({t.transpose(0, 1)}, 2.0),
                  "scale_grads: grad 0 (3, 2) is not contiguous");
  EXPECT_FG_ERROR(clip_grad_norm({t}, 0.0), "clip_grad_norm: max_norm is 0");
  EXPECT_FG_ERROR(grad_norm({Tensor::zeros({2}), Tensor::zeros({3}, DType::I32)}),
                  "grad_norm: grad 1 is i32");
  EXPECT_FG_ERROR(scale_grads({t}, Tensor()), "scale_grads: factor is undefined");
  EXPECT_FG_ERROR(scale_grads({t}, Tensor::ones({2})),
                  "scale_grads: factor is (2,) f32 cpu but must be one f32 or f64 element");
  EXPECT_FG_ERROR(scale_grads({t}, Tensor::zeros({}, DType::I32)), "scale_grads: factor is");
  EXPECT_FG_ERROR(scale_grads({t.transpose(0, 1)}, Tensor::ones({})),
                  "scale_grads: grad 0 (3, 2) is not contiguous");
  EXPECT_FG_ERROR(GradNormInBackward({t, t.transpose(0, 1)}),
                  "GradNormInBackward: grad 1 (3, 2) is not contiguous");
}

// ---- CUDA against the CPU ----

// Odd sizes, an empty tensor, one larger than any single block's share, mixed dtypes.
std::vector<Tensor> make_grads(Device device, uint64_t seed) {
  Generator gen(seed);
  std::vector<Shape> shapes = {{1}, {7, 13}, {0}, {1000003}, {4097}, {33, 65}, {3, 5, 7}};
  DType dtypes[] = {DType::F32, DType::BF16, DType::F64};
  std::vector<Tensor> out;
  for (size_t i = 0; i < shapes.size(); ++i)
    out.push_back(Tensor::randn(shapes[i], gen, dtypes[i % 3], device, 0.0, 0.01 * (i + 1)));
  return out;
}

TEST(GradNormCuda, NormMatchesCpu) {
  FG_REQUIRE_GPU();
  std::vector<Tensor> cpu = make_grads(Device::cpu(), 1), gpu = make_grads(Device::cuda(0), 1);
  double c = global_grad_norm(cpu), g = global_grad_norm(gpu);
  EXPECT_TRUE(std::isfinite(g));
  EXPECT_NEAR(g, c, 1e-12 * c);
  // One tensor at a time too (per-dtype paths).
  for (size_t i = 0; i < cpu.size(); ++i)
    EXPECT_NEAR(global_grad_norm({gpu[i]}), global_grad_norm({cpu[i]}), 1e-12 * c) << i;
}

TEST(GradNormCuda, ManyTensorsInOneLaunch) {
  FG_REQUIRE_GPU();
  // 150 tensors of sizes around the chunk size: every block must find its own.
  std::vector<Tensor> cpu, gpu;
  Generator gen(5);
  DType dtypes[] = {DType::F32, DType::BF16, DType::F64};
  for (int i = 0; i < 150; ++i) {
    Shape shape{(i * 977) % 9000 + (i % 7 == 0 ? 0 : 1)};
    cpu.push_back(Tensor::randn(shape, gen, dtypes[i % 3], Device::cpu(), 0.0, 1.0 + i % 5));
    gpu.push_back(cpu.back().to(Device::cuda(0)));
  }
  double c = global_grad_norm(cpu);
  EXPECT_NEAR(global_grad_norm(gpu), c, 1e-12 * c);
  scale_grads(cpu, 0.5);
  scale_grads(gpu, 0.5);
  for (size_t i = 0; i < cpu.size(); ++i) EXPECT_EQ(fg::max_abs_diff(gpu[i], cpu[i]), 0.0) << i;
}

TEST(GradNormCuda, AccumulatesInF64) {
  FG_REQUIRE_GPU();
  int64_t n = (int64_t{1} << 24) + 1;
  EXPECT_EQ(global_grad_norm({Tensor::ones({n}, DType::F32, Device::cuda(0))}),
            std::sqrt(static_cast<double>(n)));
}

TEST(GradNormCuda, ClipMatchesCpu) {
  FG_REQUIRE_GPU();
  std::vector<Tensor> cpu = make_grads(Device::cpu(), 2), gpu = make_grads(Device::cuda(0), 2);
  double nc = clip_grad_norm(cpu, 0.1), ng = clip_grad_norm(gpu, 0.1);
  ASSERT_GT(nc, 0.1);
  EXPECT_NEAR(ng, nc, 1e-12 * nc);
  for (size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_FALSE(fg::has_non_finite(gpu[i])) << i;
    double tol = gpu[i].dtype() == DType::BF16 ? 1e-2 : 1e-6;
    EXPECT_TRUE(close_rel(gpu[i], cpu[i], tol)) << i;
  }
  EXPECT_NEAR(global_grad_norm(gpu), 0.1, 1e-3);
}

TEST(GradNormCuda, ScaleMatchesCpu) {
  FG_REQUIRE_GPU();
  std::vector<Tensor> cpu = make_grads(Device::cpu(), 3), gpu = make_grads(Device::cuda(0), 3);
  scale_grads(cpu, -0.37);
  scale_grads(gpu, -0.37);
  for (size_t i = 0; i < cpu.size(); ++i) EXPECT_TRUE(close_rel(gpu[i], cpu[i], 1e-6)) << i;
}

TEST(GradNormCuda, NonFiniteNormLeavesGradientsAlone) {
  FG_REQUIRE_GPU();
  for (double bad : {NAN, INFINITY}) {
    std::vector<Tensor> gpu = make_grads(Device::cuda(0), 4);
    gpu[3].slice(0, 500000, 500001).fill_(bad);
    std::vector<Tensor> before = clones(gpu);
    double norm = clip_grad_norm(gpu, 1e-3);
    EXPECT_FALSE(std::isfinite(norm));
    if (std::isnan(bad)) EXPECT_TRUE(std::isnan(norm));
    for (size_t i = 0; i < gpu.size(); ++i) {
      if (i == 3) continue;
      EXPECT_EQ(fg::max_abs_diff(gpu[i], before[i]), 0.0) << i;
    }
  }
}

TEST(GradNormCuda, TensorNormMatchesCpu) {
  FG_REQUIRE_GPU();
  std::vector<Tensor> cpu = make_grads(Device::cpu(), 6), gpu = make_grads(Device::cuda(0), 6);
  Tensor n = grad_norm(gpu);
  EXPECT_EQ(n.shape(), Shape{});
  EXPECT_EQ(n.dtype(), DType::F32);
  EXPECT_EQ(n.device(), Device::cuda(0));
  double c = global_grad_norm(cpu);
  EXPECT_NEAR(n.item(), c, 1e-6 * c);
  // f64 gradients: an f64 norm, as exact as the host one.
  std::vector<Tensor> c64 = {cpu[2], cpu[5]}, g64 = {gpu[2], gpu[5]};
  Tensor n64 = grad_norm(g64);
  EXPECT_EQ(n64.dtype(), DType::F64);
  EXPECT_NEAR(n64.item(), global_grad_norm(c64), 1e-12 * global_grad_norm(c64));
  EXPECT_EQ(n64.item(), global_grad_norm(g64));
  EXPECT_EQ(grad_norm({Tensor::zeros({0}, DType::F32, Device::cuda(0))}).item(), 0.0);
}

TEST(GradNormCuda, ScaleByTensorMatchesCpu) {
  FG_REQUIRE_GPU();
  std::vector<Tensor> cpu = make_grads(Device::cpu(), 7), gpu;
  for (const Tensor& g : cpu) gpu.push_back(g.to(Device::cuda(0)));  // the same bits
  std::vector<Tensor> before = clones(gpu);
  scale_grads(gpu, Tensor::full({}, 1.0, DType::F32, Device::cuda(0)));  // returns at once
  for (size_t i = 0; i < gpu.size(); ++i) EXPECT_EQ(fg::max_abs_diff(gpu[i], before[i]), 0.0) << i;
  scale_grads(cpu, Tensor::full({}, 0.5, DType::F64));
  scale_grads(gpu, Tensor::full({}, 0.5, DType::F64, Device::cuda(0)));
  for (size_t i = 0; i < cpu.size(); ++i) EXPECT_EQ(fg::max_abs_diff(gpu[i], cpu[i]), 0.0) << i;
}

TEST(GradNormCuda, MoreTensorsThanOnePack) {
  FG_REQUIRE_GPU();
  // 600 small tensors (one launch holds 256), some empty, mixed dtypes.
  std::vector<Tensor> cpu, gpu;
  Generator gen(9);
  DType dtypes[] = {DType::F32, DType::BF16, DType::F64};
  for (int i = 0; i < 600; ++i) {
    Shape shape{(i * 131) % 700 + (i % 11 == 0 ? 0 : 1)};
    cpu.push_back(Tensor::randn(shape, gen, dtypes[i % 3], Device::cpu(), 0.0, 1.0 + i % 5));
    gpu.push_back(cpu.back().to(Device::cuda(0)));
  }
  double c = global_grad_norm(cpu);
  EXPECT_NEAR(global_grad_norm(gpu), c, 1e-12 * c);
  EXPECT_NEAR(grad_norm(gpu).item(), c, 1e-6 * c);
  scale_grads(cpu, Tensor::full({}, -0.25, DType::F64));
  scale_grads(gpu, Tensor::full({}, -0.25, DType::F64, Device::cuda(0)));
  for (size_t i = 0; i < cpu.size(); ++i) EXPECT_EQ(fg::max_abs_diff(gpu[i], cpu[i]), 0.0) << i;
}

TEST(GradNormCuda, InBackwardMatchesOnePassBitForBit) {
  FG_REQUIRE_GPU();
  // Mixed dtypes and sizes around the chunk size; two passes over other values, each
  // counting some gradients on the side stream (in a shuffled order) and the rest at
  // finish, single ones and a run of ten in one launch: a partial left from the first
  // pass, one read before its gradient was written, or a run's partials out of place
  // would show in the second.
  std::vector<Tensor> g;
  Generator gen(11);
  DType dtypes[] = {DType::F32, DType::BF16, DType::F64};
  for (int i = 0; i < 60; ++i) {
    Shape shape{(i * 977) % 20000 + (i % 9 == 0 ? 0 : 1)};
    g.push_back(Tensor::randn(shape, gen, dtypes[i % 3], Device::cuda(0), 0.0, 1.0 + i % 5));
  }
  GradNormInBackward norm(g);
  EXPECT_EQ(norm.finish().item(), grad_norm(g).item());  // no pass started: all in one run
  for (int pass = 0; pass < 2; ++pass) {
    norm.start();
    for (int k = 0; k < 60; ++k) {
      const int i = (k * 37 + pass) % 60;
      if ((i + pass) % 3 == 0 || i >= 50) continue;  // left for finish()
      scale_grads({g[i]}, pass == 0 ? 1.5 : -0.75);  // written just before it is ready
      norm.ready(i);
    }
    Tensor in_backward = norm.finish();
    EXPECT_EQ(in_backward.item(), grad_norm(g).item()) << pass;
  }
}

TEST(GradNormCuda, TensorFormsNeedOneDevice) {
  FG_REQUIRE_GPU();
  std::vector<Tensor> g = {Tensor::ones({2}), Tensor::ones({2}, DType::F32, Device::cuda(0))};
  EXPECT_FG_ERROR(grad_norm(g), "grad_norm: gradients on cpu and cuda:0");
  EXPECT_FG_ERROR(scale_grads({g[1]}, Tensor::ones({})),
                  "scale_grads: grad is on cuda:0 but factor is on cpu");
}

TEST(GradNormCuda, CpuAndGpuTensorsInOneList) {
  FG_REQUIRE_GPU();
  std::vector<Tensor> g = {Tensor::from_vector({3}, {1}),
                           Tensor::from_vector({4}, {1}, DType::F32, Device::cuda(0)), Tensor()};
  EXPECT_EQ(global_grad_norm(g), 5.0);
  EXPECT_EQ(clip_grad_norm(g, 2.5), 5.0);
  EXPECT_NEAR(g[0].item(), 1.5, 1e-6);
  EXPECT_NEAR(g[1].item(), 2.0, 1e-6);
}

}  // namespace
