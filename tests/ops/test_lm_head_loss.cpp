// The chunked LM head + loss equals the unfused linear + cross-entropy, on the
// CPU for any chunking and on the GPU against the CPU.
#include <gtest/gtest.h>

#include "ops/cross_entropy/cross_entropy.h"
#include "ops/gemm/gemm.h"
#include "ops/lm_head_loss/lm_head_loss.h"
#include "test_util.h"

using namespace fg;

namespace {
struct Problem {
  Tensor y, w, targets;
};
Problem make(int64_t n, int64_t d, int64_t v, DType dtype, Device device) {
  Generator g(8);
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(i % 5 == 2 ? -1 : static_cast<int32_t>((i * 7) % v));
  return {Tensor::randn({n, d}, g, dtype).to(device), Tensor::randn({v, d}, g, dtype, Device::cpu(), 0, 0.3).to(device),
          Tensor::from_ints(t, {n}, device)};
}
}  // namespace

TEST(LMHeadLoss, EqualsLinearPlusCrossEntropyForAnyChunking) {
  Problem p = make(37, 11, 23, DType::F64, Device::cpu());
  Tensor logits = ops::matmul(p.y, false, p.w, true);
  ops::CrossEntropyOut ce = ops::cross_entropy_forward(logits, p.targets);
  Tensor dlogits = ops::cross_entropy_backward(1.0, logits, p.targets, ce.lse, ce.count);
  Tensor dy = ops::matmul(dlogits, false, p.w, false), dw = ops::matmul(dlogits, true, p.y, false);
  for (int64_t chunk : {1, 5, 36, 37, 0}) {
    ops::LMHeadLossOut r = ops::lm_head_loss(p.y, p.w, p.targets, true, chunk);
    EXPECT_NEAR(r.loss.item(), ce.loss.item(), 1e-12) << chunk;
    EXPECT_EQ(r.count, ce.count);
    EXPECT_LE(relative_error(r.dy, dy), 1e-12) << chunk;
    EXPECT_LE(relative_error(r.dweight, dw), 1e-12) << chunk;
  }
}

TEST(LMHeadLoss, ErrorsNameTheShapes) {
  Problem p = make(6, 4, 9, DType::F32, Device::cpu());
  EXPECT_FG_ERROR(ops::lm_head_loss(p.y, Tensor::zeros({9, 5}), p.targets, false),
                  "lm_head_loss: y is (6, 4) but weight is (9, 5)");
  EXPECT_FG_ERROR(ops::lm_head_loss(p.y, p.w, Tensor::from_ints({1, 2}, {2}), false),
                  "lm_head_loss: y is (6, 4) but targets is (2,)");
}

TEST(LMHeadLossCuda, MatchesCpu) {
  FG_REQUIRE_GPU();
  for (DType dt : {DType::F32, DType::BF16}) {
    Problem cpu = make(301, 64, 1003, DType::F32, Device::cpu());
    Problem gpu{cpu.y.to(Device::cuda(), dt), cpu.w.to(Device::cuda(), dt), cpu.targets.to(Device::cuda())};
    ops::LMHeadLossOut c = ops::lm_head_loss(cpu.y, cpu.w, cpu.targets, true, 0);
    ops::LMHeadLossOut g = ops::lm_head_loss(gpu.y, gpu.w, gpu.targets, true, 97);
    double tol = dt == DType::BF16 ? 1e-2 : 1e-5;
    EXPECT_NEAR(g.loss.item(), c.loss.item(), tol * c.loss.item());
    EXPECT_TRUE(close_rel(g.dy, c.dy, tol));
    EXPECT_TRUE(close_rel(g.dweight, c.dweight, tol));
  }
}
