// Global gradient norm and clipping: known values, f64 accumulation, PyTorch's
// clip coefficient, non-finite norms, errors, and CUDA against the CPU.
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

TEST(GradNorm, Errors) {
  EXPECT_FG_ERROR(global_grad_norm({Tensor::zeros({2}), Tensor::zeros({3}, DType::I32)}),
                  "global_grad_norm: grad 1 is i32");
  Tensor t = Tensor::zeros({2, 3});
  EXPECT_FG_ERROR(scale_grads({t.transpose(0, 1)}, 2.0),
                  "scale_grads: grad 0 (3, 2) is not contiguous");
  EXPECT_FG_ERROR(clip_grad_norm({t}, 0.0), "clip_grad_norm: max_norm is 0");
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
