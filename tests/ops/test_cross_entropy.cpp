// cross_entropy: loss, lse and dlogits on hand-computed values, ignored rows,
// large logits, error messages; CUDA against the CPU in f64 (f32, bf16).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ops/cross_entropy/cross_entropy.h"
#include "test_util.h"

using fg::test::f64;
using fg::test::poison_pool;

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;
using fg::ops::cross_entropy_backward;
using fg::ops::cross_entropy_forward;
using fg::ops::kIgnoreIndex;

namespace {

void expect_near(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "element " << i;
}

// Rows [0 0 0] -> 0, [1 2 3] -> 2, [5 -5 0] ignored.
const std::vector<double> kLogits = {0, 0, 0, 1, 2, 3, 5, -5, 0};
const double kLse1 = 3 + std::log(1 + std::exp(-1.0) + std::exp(-2.0));
const double kLse2 = 5 + std::log(1 + std::exp(-10.0) + std::exp(-5.0));

TEST(CrossEntropy, ForwardHandComputed) {
  for (DType dtype : {DType::F64, DType::F32}) {
    Tensor logits = Tensor::from_vector(kLogits, {3, 3}, dtype);
    Tensor targets = Tensor::from_ints({0, 2, kIgnoreIndex}, {3});
    fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets);
    EXPECT_EQ(r.count, 2);
    EXPECT_EQ(r.loss.shape(), Shape{});
    EXPECT_EQ(r.loss.dtype(), dtype);
    EXPECT_EQ(r.lse.dtype(), dtype);
    double tol = dtype == DType::F64 ? 1e-14 : 1e-6;
    EXPECT_NEAR(r.loss.item(), (std::log(3.0) + kLse1 - 3) / 2, tol);
    expect_near(r.lse.to_vector(), {std::log(3.0), kLse1, kLse2}, tol);  // ignored rows too
  }
}

TEST(CrossEntropy, BackwardHandComputed) {
  Tensor logits = Tensor::from_vector(kLogits, {3, 3}, DType::F64);
  Tensor targets = Tensor::from_ints({0, 2, kIgnoreIndex}, {3});
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets);
  Tensor d = cross_entropy_backward(3.0, logits, targets, r.lse, r.count);
  EXPECT_EQ(d.shape(), (Shape{3, 3}));
  // dloss (softmax - onehot) / count, with dloss 3 and count 2; 0 on the ignored row.
  double e1 = std::exp(1 - kLse1), e2 = std::exp(2 - kLse1), e3 = std::exp(3 - kLse1);
  expect_near(d.to_vector(),
              {1.5 * (1.0 / 3 - 1), 1.5 / 3, 1.5 / 3, 1.5 * e1, 1.5 * e2, 1.5 * (e3 - 1), 0, 0, 0},
              1e-14);
}

TEST(CrossEntropy, AllIgnoredGivesZeroLossAndGrads) {
  Tensor logits = Tensor::from_vector(kLogits, {3, 3});
  Tensor targets = Tensor::from_ints({kIgnoreIndex, kIgnoreIndex, kIgnoreIndex}, {3});
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets);
  EXPECT_EQ(r.count, 0);
  EXPECT_EQ(r.loss.item(), 0.0);
  Tensor d = cross_entropy_backward(1.0, logits, targets, r.lse, r.count);
  EXPECT_EQ(fg::max_abs_diff(d, Tensor::zeros({3, 3})), 0.0);
}

TEST(CrossEntropy, LargeLogitsStayFinite) {
  // exp(1000) overflows; the max-subtracted log-sum-exp does not.
  Tensor logits = Tensor::from_vector({1000, 999, 998, -1000, -1001, -1003}, {2, 3});
  Tensor targets = Tensor::from_ints({1, 0}, {2});
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets);
  double lse0 = 1000 + std::log(1 + std::exp(-1.0) + std::exp(-2.0));
  double lse1 = -1000 + std::log(1 + std::exp(-1.0) + std::exp(-3.0));
  EXPECT_NEAR(r.loss.item(), ((lse0 - 999) + (lse1 + 1000)) / 2, 1e-4);
  EXPECT_FALSE(fg::has_non_finite(cross_entropy_backward(1.0, logits, targets, r.lse, r.count)));
}

TEST(CrossEntropy, ErrorsNameTheValues) {
  Tensor logits = Tensor::zeros({2, 3});
  EXPECT_FG_ERROR(cross_entropy_forward(logits, Tensor::from_ints({0, 3}, {2})),
                  "cross_entropy: target 3 at row 1 is out of range for vocab size 3");
  EXPECT_FG_ERROR(cross_entropy_forward(logits, Tensor::from_ints({-2, 0}, {2})),
                  "target -2 at row 0 is out of range for vocab size 3");
  EXPECT_FG_ERROR(cross_entropy_forward(logits, Tensor::from_ints({0, 1, 2}, {3})),
                  "cross_entropy: logits is (2, 3) but targets is (3,)");
  EXPECT_FG_ERROR(cross_entropy_forward(logits, Tensor::zeros({2})),
                  "cross_entropy: targets is f32 but expected i32");
  EXPECT_FG_ERROR(cross_entropy_forward(Tensor::zeros({6}), Tensor::from_ints({0}, {1})),
                  "cross_entropy: logits must be (N, V), got (6,)");
  Tensor targets = Tensor::from_ints({0, 1}, {2});
  EXPECT_FG_ERROR(cross_entropy_backward(1.0, logits, targets, Tensor::zeros({3}), 2),
                  "cross_entropy_backward: lse is (3,) but expected (2,)");
  EXPECT_FG_ERROR(cross_entropy_backward(1.0, logits, targets, Tensor::zeros({2}), 5),
                  "cross_entropy_backward: count 5 is outside [0, 2]");
}

// ---------------------------------------------------------------------------
// CUDA against the CPU in f64 on the same (rounded) inputs.

struct CeCase {
  int64_t n, vocab;
  double offset;  // added to every logit: the log-sum-exp must subtract the max
};

std::string case_name(const CeCase& c) {
  return "N" + std::to_string(c.n) + "_V" + std::to_string(c.vocab) +
         (c.offset > 0   ? "_plus"
          : c.offset < 0 ? "_minus"
                         : "") +
         (c.offset != 0 ? std::to_string(static_cast<int>(std::fabs(c.offset))) : "");
}

// Targets in [0, vocab) with every third row ignored.
Tensor random_targets(int64_t n, int64_t vocab, uint64_t seed) {
  Generator gen(seed);
  std::vector<double> u = Tensor::uniform({n}, gen, 0.0, 1.0, DType::F64).to_vector();
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i)
    t[i] = i % 3 == 1 ? kIgnoreIndex : static_cast<int32_t>(u[i] * vocab) % vocab;
  return Tensor::from_ints(t, {n});
}

class CrossEntropyCuda : public ::testing::TestWithParam<CeCase> {};

void check_cross_entropy(const CeCase& c, DType dtype, double tol) {
  Device gpu = Device::cuda(0);
  Generator gen(17 + c.vocab);
  Tensor logits = Tensor::randn({c.n, c.vocab}, gen, dtype, gpu, c.offset, 3.0);
  Tensor targets = random_targets(c.n, c.vocab, 18 + c.n);
  fg::ops::CrossEntropyOut ref = cross_entropy_forward(f64(logits), targets);
  Tensor dref = cross_entropy_backward(0.75, f64(logits), targets, ref.lse, ref.count);

  poison_pool({{}, {c.n}}, DType::F64, gpu);  // NaN bits for f32 too
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets.to(gpu));
  EXPECT_EQ(r.count, ref.count);
  EXPECT_EQ(r.loss.shape(), Shape{});
  DType loss_dtype = dtype == DType::F64 ? DType::F64 : DType::F32;  // fp32 for bf16 logits
  EXPECT_EQ(r.loss.dtype(), loss_dtype);
  EXPECT_EQ(r.lse.dtype(), loss_dtype);
  EXPECT_FALSE(fg::has_non_finite(r.lse));
  // Loss and lse are fp32 sums of the same inputs in both dtypes.
  EXPECT_TRUE(close_rel(r.lse, ref.lse, 1e-5)) << "lse";
  EXPECT_TRUE(close_rel(r.loss, ref.loss, 1e-5))
      << "loss " << r.loss.item() << " vs " << ref.loss.item();

  poison_pool({{c.n, c.vocab}}, dtype, gpu);
  Tensor d = cross_entropy_backward(0.75, logits, targets.to(gpu), r.lse, r.count);
  EXPECT_EQ(d.dtype(), dtype);
  EXPECT_FALSE(fg::has_non_finite(d));
  EXPECT_TRUE(close_rel(d, dref, tol)) << "dlogits";
}

TEST_P(CrossEntropyCuda, F32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_cross_entropy(GetParam(), DType::F32, 1e-5);
}

TEST_P(CrossEntropyCuda, Bf16MatchesCpu) {
  FG_REQUIRE_GPU();
  check_cross_entropy(GetParam(), DType::BF16, 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CrossEntropyCuda,
                         ::testing::Values(CeCase{1, 1, 0}, CeCase{2, 3, 0}, CeCase{7, 11, 0},
                                           CeCase{37, 1001, 0}, CeCase{5, 4099, 0},
                                           CeCase{13, 257, 1000}, CeCase{67, 50257, 0},
                                           CeCase{3, 100003, -500}),
                         [](const auto& info) { return case_name(info.param); });

TEST(CrossEntropyCudaEdge, F64MatchesCpu) {
  FG_REQUIRE_GPU();
  check_cross_entropy({9, 333, 0}, DType::F64, 1e-12);
}

#ifdef FG_CUDA  // calls the CUDA entry points directly
TEST(CrossEntropyCudaEdge, KernelsWriteEveryElement) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  Generator gen(19);
  for (DType dtype : {DType::F32, DType::BF16}) {
    Tensor logits = Tensor::randn({11, 301}, gen, dtype, gpu);
    Tensor targets = random_targets(11, 301, 20).to(gpu);
    Tensor loss = Tensor::full({}, NAN, DType::F32, gpu);
    Tensor lse = Tensor::full({11}, NAN, DType::F32, gpu);
    int64_t count = fg::ops::detail::cross_entropy_forward_cuda(logits, targets, loss, lse);
    EXPECT_EQ(count, 7);
    EXPECT_FALSE(fg::has_non_finite(loss)) << dtype_name(dtype);
    EXPECT_FALSE(fg::has_non_finite(lse)) << dtype_name(dtype);
    Tensor d = Tensor::full({11, 301}, NAN, dtype, gpu);
    fg::ops::detail::cross_entropy_backward_cuda(1.0, logits, targets, lse, count, d);
    EXPECT_FALSE(fg::has_non_finite(d)) << dtype_name(dtype);
    EXPECT_EQ(fg::max_abs_diff(d.slice(0, 1, 2), Tensor::zeros({1, 301})), 0.0);  // ignored
  }
}
#endif

TEST(CrossEntropyCudaEdge, AllIgnoredGivesZeroLossAndGrads) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  Tensor logits = Tensor::from_vector(kLogits, {3, 3}, DType::BF16, gpu);
  Tensor targets = Tensor::from_ints({kIgnoreIndex, kIgnoreIndex, kIgnoreIndex}, {3}, gpu);
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets);
  EXPECT_EQ(r.count, 0);
  EXPECT_EQ(r.loss.item(), 0.0);
  Tensor d = cross_entropy_backward(1.0, logits, targets, r.lse, r.count);
  EXPECT_EQ(fg::max_abs_diff(d, Tensor::zeros({3, 3})), 0.0);
}

TEST(CrossEntropyCudaEdge, OutOfRangeTargetGivesNanLoss) {
  FG_REQUIRE_GPU();
  // No host sync to check targets on the GPU: a bad target makes the loss NaN.
  Device gpu = Device::cuda(0);
  Tensor logits = Tensor::zeros({2, 3}, DType::F32, gpu);
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, Tensor::from_ints({0, 3}, {2}, gpu));
  EXPECT_TRUE(std::isnan(r.loss.item()));
}

TEST(CrossEntropyCudaEdge, MaskedAndNanLogits) {
  FG_REQUIRE_GPU();
  // -inf logits (a masked vocabulary) add nothing, also before any finite value
  // is seen; a NaN logit makes its row's lse NaN.
  Device gpu = Device::cuda(0);
  int64_t v = 1031;
  std::vector<double> x(3 * v);
  for (int64_t j = 0; j < v; ++j) {
    x[j] = j < 700 ? -INFINITY : 0.01 * (j % 17);  // row 0: leading -inf
    x[v + j] = j % 2 ? -INFINITY : -0.02 * (j % 13);
    x[2 * v + j] = j == 555 ? NAN : 1.0;
  }
  Tensor logits = Tensor::from_vector(x, {3, v}, DType::F32);
  Tensor targets = Tensor::from_ints({800, 4, kIgnoreIndex}, {3});
  fg::ops::CrossEntropyOut ref = cross_entropy_forward(logits, targets);
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits.to(gpu), targets.to(gpu));
  EXPECT_TRUE(close_rel(r.lse.slice(0, 0, 2), ref.lse.slice(0, 0, 2), 1e-6));
  EXPECT_TRUE(std::isnan(r.lse.to_vector()[2]));
  EXPECT_TRUE(close_rel(r.loss, ref.loss, 1e-6));  // the NaN row is ignored
  Tensor d = cross_entropy_backward(1.0, logits.to(gpu), targets.to(gpu), r.lse, r.count);
  EXPECT_TRUE(close_rel(d, cross_entropy_backward(1.0, logits, targets, ref.lse, ref.count), 1e-6));
}

TEST(CrossEntropyCudaEdge, DeviceMismatchIsAnError) {
  FG_REQUIRE_GPU();
  Tensor logits = Tensor::zeros({2, 3}, DType::F32, Device::cuda(0));
  EXPECT_FG_ERROR(cross_entropy_forward(logits, Tensor::from_ints({0, 1}, {2})),
                  "cross_entropy: logits is on cuda:0 but targets is on cpu");
}

}  // namespace
