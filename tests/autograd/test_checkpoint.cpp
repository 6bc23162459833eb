// Activation recomputation: checkpoint(fn) gives the gradients of running fn
// plainly while keeping fewer bytes alive between forward and backward.
#include <gtest/gtest.h>

#include "autograd/checkpoint.h"
#include "autograd/function.h"
#include "autograd/functions.h"
#include "ops/gemm/gemm.h"
#include "test_util.h"

using namespace fg;
using namespace fg::ag;

namespace {
struct Block {
  Variable norm_w, w1, w2;
  explicit Block(int64_t d) {
    Generator g(11);
    norm_w = Variable(Tensor::uniform({d}, g, 0.5, 1.5, DType::F64), true);
    w1 = Variable(Tensor::randn({2 * d, d}, g, DType::F64, Device::cpu(), 0, 0.3), true);
    w2 = Variable(Tensor::randn({d, d}, g, DType::F64, Device::cpu(), 0, 0.3), true);
  }
  // An MLP block with several intermediates: norm, up projection, SwiGLU, down.
  std::vector<Variable> operator()(const std::vector<Variable>& in) const {
    Variable n = rmsnorm(in[0], norm_w, 1e-5);
    Variable y = linear(swiglu(linear(n, w1)), w2);
    return {add(in[0], y)};
  }
};
}  // namespace

TEST(Checkpoint, SameGradientsFewerLiveBytes) {
  const int64_t rows = 37, d = 29;
  Generator g(5);
  Tensor x0 = Tensor::randn({rows, d}, g, DType::F64);
  Tensor seed_grad = Tensor::randn({rows, d}, g, DType::F64);

  auto run = [&](bool use_checkpoint, int64_t* kept_bytes) {
    Block block(d);
    Variable x(x0.clone(), true);
    int64_t before = Storage::live_bytes();
    Variable out = use_checkpoint ? checkpoint(block, {x})[0] : block({x})[0];
    *kept_bytes = Storage::live_bytes() - before;
    out.backward(seed_grad);
    return std::vector<Tensor>{x.grad(), block.norm_w.grad(), block.w1.grad(), block.w2.grad()};
  };
  int64_t plain_bytes = 0, ckpt_bytes = 0;
  auto plain = run(false, &plain_bytes);
  auto ckpt = run(true, &ckpt_bytes);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_EQ(max_abs_diff(plain[i], ckpt[i]), 0.0) << i;
  // Plain keeps n, the up projection, the SwiGLU output and rstd; the checkpoint keeps
  // only the output (the input x exists either way).
  EXPECT_EQ(ckpt_bytes, rows * d * 8);
  EXPECT_GT(plain_bytes, 4 * ckpt_bytes);
}

TEST(Checkpoint, NestedInsideNoGradDoesNotRecord) {
  Block block(5);
  Variable x(Tensor::ones({3, 5}, DType::F64), true);
  NoGradGuard guard;
  EXPECT_FALSE(checkpoint(block, {x})[0].requires_grad());
}

// A region adding its second input (a residual stream) to a product: that input's gradient
// is the region's output gradient itself, and reaches the input's producer as that tensor,
// not a copy (the stand-in leaves of the recomputation take gradients as delivered).
TEST(Checkpoint, InputGradientsArriveWithoutACopy) {
  Generator g(3);
  Variable x(Tensor::randn({4, 6}, g, DType::F64), true);
  Variable w(Tensor::randn({5, 6}, g, DType::F64), true);
  Variable r0(Tensor::randn({4, 5}, g, DType::F64), true);
  const void* seen = nullptr;
  Variable r = record("probe", {r0}, {r0.data().clone()}, [&seen](const std::vector<Tensor>& gr) {
    seen = gr[0].raw_data();
    return std::vector<Tensor>{gr[0]};
  })[0];
  auto region = [&w](const std::vector<Variable>& in) {
    return std::vector<Variable>{linear(in[0], w, Variable(), in[1])};
  };
  Variable out = checkpoint(region, {x, r})[0];
  const Tensor seed = Tensor::randn({4, 5}, g, DType::F64);
  out.backward(seed);
  EXPECT_EQ(seen, seed.raw_data());
  EXPECT_EQ(max_abs_diff(r0.grad(), seed), 0.0);
  EXPECT_EQ(max_abs_diff(x.grad(), ops::matmul(seed, false, w.data(), false)), 0.0);
}

// recomputing() is true only while backward runs a region again: not in a region's first run,
// nor in the first run of a checkpoint nested in a recomputation. A region whose last product
// then records its node with an unwritten output gives the plain graph's gradients.
TEST(Checkpoint, RecomputingOnlyInTheSecondRun) {
  Generator g(9);
  const Tensor x0 = Tensor::randn({3, 4}, g, DType::F64), w0 = Tensor::randn({5, 4}, g, DType::F64);
  const Tensor seed = Tensor::randn({3, 5}, g, DType::F64);
  std::vector<bool> seen_outer, seen_inner;
  auto inner = [&](const std::vector<Variable>& in) {
    seen_inner.push_back(recomputing());
    return std::vector<Variable>{add(in[0], in[0])};
  };
  Variable x(x0.clone(), true), w(w0.clone(), true);
  auto outer = [&](const std::vector<Variable>& in) {
    seen_outer.push_back(recomputing());
    Variable h = checkpoint(inner, {in[0]})[0];
    if (recomputing())
      return std::vector<Variable>{
          record_linear(h, w, Variable(), Tensor::full({3, 5}, NAN, DType::F64))};
    return std::vector<Variable>{linear(h, w)};
  };
  EXPECT_FALSE(recomputing());
  checkpoint(outer, {x})[0].backward(seed);
  EXPECT_FALSE(recomputing());
  EXPECT_EQ(seen_outer, (std::vector<bool>{false, true}));
  EXPECT_EQ(seen_inner, (std::vector<bool>{false, false, true}));

  Variable xp(x0.clone(), true), wp(w0.clone(), true);
  linear(add(xp, xp), wp).backward(seed);
  EXPECT_EQ(max_abs_diff(x.grad(), xp.grad()), 0.0);
  EXPECT_EQ(max_abs_diff(w.grad(), wp.grad()), 0.0);
}
