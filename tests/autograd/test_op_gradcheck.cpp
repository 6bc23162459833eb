// Every op's backward against central finite differences in f64 (the same
// checks as `gradcheck --ops`), and proof that the machinery catches wrong ones.
#include <gtest/gtest.h>

#include <set>

#include "autograd/function.h"
#include "autograd/functions.h"
#include "autograd/op_checks.h"
#include "ops/linear/linear.h"
#include "ops/rope/rope.h"
#include "test_util.h"

using namespace fg;
using namespace fg::ag;

class OpGradcheck : public ::testing::TestWithParam<OpCheck> {};

TEST_P(OpGradcheck, MatchesFiniteDifferences) {
  GradCheckResult r = GetParam().run();
  EXPECT_TRUE(r.passed) << GetParam().op << " " << GetParam().shapes << ": max abs err "
                        << r.max_abs_error << ", worst " << r.worst;
  EXPECT_GT(r.checked, 0);
}

INSTANTIATE_TEST_SUITE_P(AllOps, OpGradcheck, ::testing::ValuesIn(all_op_checks()),
                         [](const ::testing::TestParamInfo<OpCheck>& info) {
                           return info.param.op + "_" + std::to_string(info.index);
                         });

TEST(OpGradcheckRegistry, CoversEveryDifferentiableOp) {
  std::set<std::string> ops;
  for (const OpCheck& c : all_op_checks()) ops.insert(c.op);
  for (const char* op : {"embedding", "add", "linear", "rmsnorm", "add_rmsnorm", "rope",
                         "rmsnorm_qkv_rope", "rmsnorm_qkv_rope_attention", "attention", "swiglu",
                         "swiglu_mlp", "cross_entropy", "lm_head_loss"})
    EXPECT_TRUE(ops.count(op)) << "no finite-difference check for " << op;
}

// Negative tests: deliberately wrong backward passes must fail the same check.
namespace {
const Tensor kPositions = Tensor::from_ints({7, 8, 9, 10, 11}, {5});

Variable rope_with_sign_flip(const Variable& x) {
  Tensor y = ops::rope_forward(x.data(), kPositions, 6, 10000.0);
  return record("bad_rope", {x}, {y}, [](const std::vector<Tensor>& g) {
    // Wrong: rotates forward again instead of applying the inverse rotation.
    return std::vector<Tensor>{ops::rope_forward(g[0], kPositions, 6, 10000.0)};
  })[0];
}

Variable linear_with_scaled_dweight(const Variable& x, const Variable& w) {
  Tensor y = ops::linear_forward(x.data(), w.data(), Tensor());
  return record("bad_linear", {x, w}, {y}, [x = x.data(), w = w.data()](const std::vector<Tensor>& g) {
    ops::LinearGrads grads = ops::linear_backward(g[0], x, w, false);
    std::vector<double> dw = grads.dweight.to_vector();
    for (double& v : dw) v *= 1.01;  // wrong by 1 %
    return std::vector<Tensor>{grads.dx, Tensor::from_vector(dw, w.shape(), w.dtype())};
  })[0];
}
}  // namespace

TEST(OpGradcheckNegative, CatchesRopeBackwardWithWrongSign) {
  GradCheckResult r = gradcheck(
      [](const std::vector<Variable>& in) { return std::vector<Variable>{rope_with_sign_flip(in[0])}; },
      {random_leaf({3, 5, 3, 10}, 21)});
  EXPECT_FALSE(r.passed);
  EXPECT_GT(r.max_abs_error, 1e-2);
}

TEST(OpGradcheckNegative, CatchesLinearWeightGradientOffByOnePercent) {
  GradCheckResult r = gradcheck(
      [](const std::vector<Variable>& in) {
        return std::vector<Variable>{linear_with_scaled_dweight(in[0], in[1])};
      },
      {random_leaf({3, 5, 7}, 22), random_leaf({11, 7}, 23)});
  EXPECT_FALSE(r.passed);
}

TEST(OpGradcheckNegative, CorrectVersionsOfTheSameOpsPass) {
  GradCheckResult r = gradcheck(
      [](const std::vector<Variable>& in) {
        return std::vector<Variable>{rope(in[0], kPositions, 6, 10000.0), linear(in[1], in[2])};
      },
      {random_leaf({3, 5, 3, 10}, 21), random_leaf({3, 5, 7}, 22), random_leaf({11, 7}, 23)});
  EXPECT_TRUE(r.passed) << r.worst;
}
