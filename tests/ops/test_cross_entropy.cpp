// cross_entropy: loss, lse and dlogits on hand-computed values, ignored rows,
// large logits, the count (own or given) and dloss as tensors, error messages;
// forward and backward in one call (with_grad, in place); CUDA against the CPU
// in f64 (f32, bf16), with and without 16-byte packs.
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
using fg::ops::count_targets;
using fg::ops::cross_entropy_backward;
using fg::ops::cross_entropy_forward;
using fg::ops::cross_entropy_with_grad;
using fg::ops::kIgnoreIndex;

namespace {

void expect_near(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "element " << i;
}

// () tensors: a count (i32) and a dloss.
Tensor count_of(int32_t c, Device device = Device::cpu()) {
  return Tensor::from_ints({c}, {}, device);
}
Tensor scalar(double v, DType dtype = DType::F64, Device device = Device::cpu()) {
  return Tensor::full({}, v, dtype, device);
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
    EXPECT_EQ(r.count.shape(), Shape{});
    EXPECT_EQ(r.count.dtype(), DType::I32);
    EXPECT_EQ(r.count.item(), 2);
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
  Tensor d = cross_entropy_backward(scalar(3.0), logits, targets, r.lse, r.count);
  EXPECT_EQ(d.shape(), (Shape{3, 3}));
  // dloss (softmax - onehot) / count, with dloss 3 and count 2; 0 on the ignored row.
  double e1 = std::exp(1 - kLse1), e2 = std::exp(2 - kLse1), e3 = std::exp(3 - kLse1);
  expect_near(d.to_vector(),
              {1.5 * (1.0 / 3 - 1), 1.5 / 3, 1.5 / 3, 1.5 * e1, 1.5 * e2, 1.5 * (e3 - 1), 0, 0, 0},
              1e-14);
}

TEST(CrossEntropy, WithGradIsForwardThenBackwardInPlace) {
  Tensor targets = Tensor::from_ints({0, 2, kIgnoreIndex}, {3});
  for (int32_t c : {2, 7, 0}) {  // its own count, a larger batch's, none
    Tensor logits = Tensor::from_vector(kLogits, {3, 3});
    fg::ops::CrossEntropyOut f = cross_entropy_forward(logits, targets, count_of(c));
    Tensor d = cross_entropy_backward(scalar(0.5), logits, targets, f.lse, f.count);
    const void* storage = logits.raw_data();
    fg::ops::CrossEntropyOut r = cross_entropy_with_grad(logits, targets, count_of(c), scalar(0.5));
    EXPECT_EQ(logits.raw_data(), storage);
    EXPECT_EQ(r.loss.item(), f.loss.item()) << c;
    EXPECT_EQ(fg::max_abs_diff(r.lse, f.lse), 0.0) << c;
    EXPECT_EQ(fg::max_abs_diff(logits, d), 0.0) << c;  // dlogits, over the logits
  }
  Tensor logits = Tensor::from_vector(kLogits, {3, 3});
  EXPECT_FG_ERROR(cross_entropy_with_grad(logits.transpose(0, 1), targets, Tensor(), scalar(1)),
                  "cross_entropy_with_grad: logits (3, 3) must have contiguous rows");
  EXPECT_FG_ERROR(cross_entropy_with_grad(logits, targets, Tensor(), Tensor::ones({1})),
                  "cross_entropy_with_grad: dloss is (1,) but expected ()");
  EXPECT_FG_ERROR(cross_entropy_with_grad(logits, Tensor::from_ints({0}, {1}), Tensor(), scalar(1)),
                  "cross_entropy_with_grad: logits is (3, 3) but targets is (1,)");
}

// Logits in rows padded to a stride of ld (what the LM head hands over) give the same bits
// as contiguous ones, forward, backward and in place, and the padding is never written.
void check_padded_rows(int64_t n, int64_t vocab, int64_t ld, DType dtype, Device device) {
  SCOPED_TRACE(std::string(dtype_name(dtype)) + " V " + std::to_string(vocab) + " ld " +
               std::to_string(ld) + " on " + device.str());
  Generator gen(vocab);
  Tensor logits = Tensor::randn({n, vocab}, gen, dtype, device);
  Tensor targets = Tensor::from_ints({0, static_cast<int32_t>(vocab - 1), kIgnoreIndex, 1}, {4});
  targets = targets.slice(0, 0, n).to(device);
  const double kPad = 123.0;
  Tensor storage = Tensor::full({n, ld}, kPad, dtype, device);
  Tensor padded = storage.slice(1, 0, vocab);
  padded.copy_(logits);
  ASSERT_EQ(padded.strides()[0], ld);
  Tensor dloss = Tensor::full({}, 0.5, dtype == DType::F64 ? DType::F64 : DType::F32, device);

  fg::ops::CrossEntropyOut want = cross_entropy_forward(logits, targets);
  fg::ops::CrossEntropyOut got = cross_entropy_forward(padded, targets);
  EXPECT_EQ(fg::max_abs_diff(got.lse, want.lse), 0.0);
  EXPECT_EQ(fg::max_abs_diff(got.loss, want.loss), 0.0);
  Tensor d_want = cross_entropy_backward(dloss, logits, targets, want.lse, want.count);
  Tensor d_got = cross_entropy_backward(dloss, padded, targets, want.lse, want.count);
  EXPECT_EQ(fg::max_abs_diff(d_got, d_want), 0.0);

  Tensor in_place = logits.clone();
  fg::ops::CrossEntropyOut w_want = cross_entropy_with_grad(in_place, targets, Tensor(), dloss);
  fg::ops::CrossEntropyOut w_got = cross_entropy_with_grad(padded, targets, Tensor(), dloss);
  EXPECT_EQ(fg::max_abs_diff(w_got.lse, w_want.lse), 0.0);
  EXPECT_EQ(fg::max_abs_diff(padded, in_place), 0.0);  // dlogits over the padded rows
  Tensor pad = storage.slice(1, vocab, ld);
  EXPECT_EQ(fg::max_abs_diff(pad, Tensor::full(pad.shape(), kPad, dtype, device)), 0.0);
}

TEST(CrossEntropy, PaddedRowsGiveTheSameBits) {
  check_padded_rows(4, 7, 10, DType::F64, Device::cpu());
  check_padded_rows(3, 65, 72, DType::F32, Device::cpu());
}

TEST(CrossEntropy, AllIgnoredGivesZeroLossAndGrads) {
  Tensor logits = Tensor::from_vector(kLogits, {3, 3});
  Tensor targets = Tensor::from_ints({kIgnoreIndex, kIgnoreIndex, kIgnoreIndex}, {3});
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets);
  EXPECT_EQ(r.count.item(), 0);
  EXPECT_EQ(r.loss.item(), 0.0);
  Tensor d = cross_entropy_backward(scalar(1.0, DType::F32), logits, targets, r.lse, r.count);
  EXPECT_EQ(fg::max_abs_diff(d, Tensor::zeros({3, 3})), 0.0);
}

TEST(CrossEntropy, CountTargetsSkipsIgnored) {
  Tensor c = count_targets(Tensor::from_ints({4, kIgnoreIndex, 0, 7, kIgnoreIndex}, {5}));
  EXPECT_EQ(c.shape(), Shape{});
  EXPECT_EQ(c.dtype(), DType::I32);
  EXPECT_EQ(c.item(), 3);
  EXPECT_EQ(count_targets(Tensor::from_ints({}, {0})).item(), 0);
  // A strided view counts its own elements.
  EXPECT_EQ(count_targets(Tensor::from_ints({1, kIgnoreIndex, 2, kIgnoreIndex}, {4}).slice(0, 1, 3))
                .item(),
            1);
}

TEST(CrossEntropy, ChunksWithTheGlobalCountAddUpToTheMean) {
  // Rows 0-1 and row 2 as chunks of one batch: each divides by the batch's count
  // (2), so their losses add up to the whole mean and their dlogits are the rows
  // of the whole dlogits.
  Tensor logits = Tensor::from_vector(kLogits, {3, 3}, DType::F64);
  Tensor targets = Tensor::from_ints({0, 2, kIgnoreIndex}, {3});
  fg::ops::CrossEntropyOut whole = cross_entropy_forward(logits, targets);
  Tensor count = count_targets(targets);
  fg::ops::CrossEntropyOut a =
      cross_entropy_forward(logits.slice(0, 0, 2), targets.slice(0, 0, 2), count);
  fg::ops::CrossEntropyOut b =
      cross_entropy_forward(logits.slice(0, 2, 3), targets.slice(0, 2, 3), count);
  EXPECT_EQ(a.count.item(), 2);
  EXPECT_EQ(b.count.item(), 2);
  EXPECT_EQ(b.loss.item(), 0.0);  // only an ignored row
  EXPECT_NEAR(a.loss.item() + b.loss.item(), whole.loss.item(), 1e-15);
  // A chunk's own count would make its loss the chunk's mean instead.
  EXPECT_NEAR(
      cross_entropy_forward(logits.slice(0, 0, 1), targets.slice(0, 0, 1), count).loss.item(),
      std::log(3.0) / 2, 1e-15);
  Tensor dwhole = cross_entropy_backward(scalar(1.0), logits, targets, whole.lse, whole.count);
  Tensor da = cross_entropy_backward(scalar(1.0), logits.slice(0, 0, 2), targets.slice(0, 0, 2),
                                     a.lse, count);
  EXPECT_EQ(fg::max_abs_diff(da, dwhole.slice(0, 0, 2)), 0.0);
}

TEST(CrossEntropy, BackwardUsesTheCountItIsGiven) {
  // The negative check: with count 1 where 2 rows count, every gradient doubles.
  Tensor logits = Tensor::from_vector(kLogits, {3, 3}, DType::F64);
  Tensor targets = Tensor::from_ints({0, 2, kIgnoreIndex}, {3});
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets);
  ASSERT_EQ(r.count.item(), 2);
  Tensor right = cross_entropy_backward(scalar(1.0), logits, targets, r.lse, r.count);
  Tensor wrong = cross_entropy_backward(scalar(1.0), logits, targets, r.lse, count_of(1));
  EXPECT_GT(fg::max_abs_diff(wrong, right), 0.1);
  std::vector<double> w = wrong.to_vector(), g = right.to_vector();
  for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(w[i], 2 * g[i], 1e-15) << "element " << i;
  // And forward divides by it.
  EXPECT_NEAR(cross_entropy_forward(logits, targets, count_of(1)).loss.item(), 2 * r.loss.item(),
              1e-14);
  // Count 0: zeros everywhere, even on rows whose target counts.
  EXPECT_EQ(
      fg::max_abs_diff(cross_entropy_backward(scalar(1.0), logits, targets, r.lse, count_of(0)),
                       Tensor::zeros({3, 3}, DType::F64)),
      0.0);
  EXPECT_EQ(cross_entropy_forward(logits, targets, count_of(0)).loss.item(), 0.0);
}

TEST(CrossEntropy, DlossOfAnyFloatDtype) {
  Tensor logits = Tensor::from_vector(kLogits, {3, 3}, DType::F64);
  Tensor targets = Tensor::from_ints({0, 2, kIgnoreIndex}, {3});
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets);
  Tensor want = cross_entropy_backward(scalar(0.5), logits, targets, r.lse, r.count);
  for (DType dt : {DType::F32, DType::BF16})
    EXPECT_EQ(fg::max_abs_diff(
                  cross_entropy_backward(scalar(0.5, dt), logits, targets, r.lse, r.count), want),
              0.0)
        << dtype_name(dt);
}

TEST(CrossEntropy, LargeLogitsStayFinite) {
  // exp(1000) overflows; the max-subtracted log-sum-exp does not.
  Tensor logits = Tensor::from_vector({1000, 999, 998, -1000, -1001, -1003}, {2, 3});
  Tensor targets = Tensor::from_ints({1, 0}, {2});
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets);
  double lse0 = 1000 + std::log(1 + std::exp(-1.0) + std::exp(-2.0));
  double lse1 = -1000 + std::log(1 + std::exp(-1.0) + std::exp(-3.0));
  EXPECT_NEAR(r.loss.item(), ((lse0 - 999) + (lse1 + 1000)) / 2, 1e-4);
  EXPECT_FALSE(fg::has_non_finite(
      cross_entropy_backward(scalar(1.0, DType::F32), logits, targets, r.lse, r.count)));
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
  EXPECT_FG_ERROR(cross_entropy_forward(logits, Tensor::from_ints({0, 1}, {2}), Tensor::zeros({})),
                  "cross_entropy: count is f32 but expected i32");
  EXPECT_FG_ERROR(count_targets(Tensor::from_ints({0, 1}, {1, 2})),
                  "count_targets: targets must be (N), got (1, 2)");
  Tensor targets = Tensor::from_ints({0, 1}, {2});
  Tensor one = scalar(1.0, DType::F32), lse = Tensor::zeros({2}), count = count_of(2);
  EXPECT_FG_ERROR(cross_entropy_backward(one, logits, targets, Tensor::zeros({3}), count),
                  "cross_entropy_backward: lse is (3,) but expected (2,)");
  EXPECT_FG_ERROR(cross_entropy_backward(one, logits, targets, lse, count_of(-1)),
                  "cross_entropy_backward: count -1 is negative");
  EXPECT_FG_ERROR(cross_entropy_backward(one, logits, targets, lse, Tensor::from_ints({2}, {1})),
                  "cross_entropy_backward: count is (1,) but expected ()");
  EXPECT_FG_ERROR(cross_entropy_backward(one, logits, targets, lse, Tensor()),
                  "cross_entropy_backward: count is undefined");
  EXPECT_FG_ERROR(cross_entropy_backward(Tensor::ones({1}), logits, targets, lse, count),
                  "cross_entropy_backward: dloss is (1,) but expected ()");
  EXPECT_FG_ERROR(cross_entropy_backward(count, logits, targets, lse, count),
                  "cross_entropy_backward: dloss must be a float tensor");
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
  Tensor dref = cross_entropy_backward(scalar(0.75), f64(logits), targets, ref.lse, ref.count);
  DType loss_dtype = dtype == DType::F64 ? DType::F64 : DType::F32;  // fp32 for bf16 logits

  poison_pool({{}, {c.n}}, DType::F64, gpu);  // NaN bits for f32 too
  fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets.to(gpu));
  EXPECT_EQ(r.count.device(), gpu);
  EXPECT_EQ(r.count.item(), ref.count.item());
  EXPECT_EQ(r.loss.shape(), Shape{});
  EXPECT_EQ(r.loss.dtype(), loss_dtype);
  EXPECT_EQ(r.lse.dtype(), loss_dtype);
  EXPECT_FALSE(fg::has_non_finite(r.lse));
  // Loss and lse are fp32 sums of the same inputs in both dtypes.
  EXPECT_TRUE(close_rel(r.lse, ref.lse, 1e-5)) << "lse";
  EXPECT_TRUE(close_rel(r.loss, ref.loss, 1e-5))
      << "loss " << r.loss.item() << " vs " << ref.loss.item();

  poison_pool({{c.n, c.vocab}}, dtype, gpu);
  Tensor d = cross_entropy_backward(scalar(0.75, loss_dtype, gpu), logits, targets.to(gpu), r.lse,
                                    r.count);
  EXPECT_EQ(d.dtype(), dtype);
  EXPECT_FALSE(fg::has_non_finite(d));
  EXPECT_TRUE(close_rel(d, dref, tol)) << "dlogits";

  // Both in one kernel, dlogits over the logits: the same values as the two kernels.
  Tensor inplace = logits.clone();
  fg::ops::CrossEntropyOut w = cross_entropy_with_grad(inplace, targets.to(gpu), r.count,
                                                       scalar(0.75, loss_dtype, gpu));
  EXPECT_EQ(fg::max_abs_diff(w.lse, r.lse), 0.0) << "with_grad lse";
  EXPECT_EQ(fg::max_abs_diff(w.loss, r.loss), 0.0) << "with_grad loss";
  EXPECT_EQ(fg::max_abs_diff(inplace, d), 0.0) << "with_grad dlogits";
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
                                           CeCase{3, 100003, -500},
                                           // rows of whole 16-byte packs
                                           CeCase{4, 8, 0}, CeCase{6, 4096, 30},
                                           CeCase{5, 32000, 0}, CeCase{33, 50304, 0},
                                           // past what the fused kernel stages in shared memory
                                           CeCase{3, 65536, 0}),
                         [](const auto& info) { return case_name(info.param); });

TEST(CrossEntropyCudaEdge, F64MatchesCpu) {
  FG_REQUIRE_GPU();
  check_cross_entropy({9, 333, 0}, DType::F64, 1e-12);
}

TEST(CrossEntropyCudaEdge, PaddedRowsGiveTheSameBits) {
  FG_REQUIRE_GPU();
  for (DType dtype : {DType::BF16, DType::F32}) {
    check_padded_rows(4, 65, 72, dtype, Device::cuda(0));        // single values
    check_padded_rows(4, 4096, 4104, dtype, Device::cuda(0));    // 16-byte packs
    check_padded_rows(3, 50304, 50312, dtype, Device::cuda(0));  // bf16: staged rows
  }
}

#ifdef FG_CUDA  // calls the CUDA entry points directly
TEST(CrossEntropyCudaEdge, KernelsWriteEveryElement) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  Generator gen(19);
  for (DType dtype : {DType::F32, DType::BF16}) {
    Tensor logits = Tensor::randn({11, 301}, gen, dtype, gpu);
    Tensor targets = random_targets(11, 301, 20).to(gpu);
    Tensor count = Tensor::from_ints({-5}, {}, gpu);
    fg::ops::detail::count_targets_cuda(targets, count);
    EXPECT_EQ(count.item(), 7);
    Tensor loss = Tensor::full({}, NAN, DType::F32, gpu);
    Tensor lse = Tensor::full({11}, NAN, DType::F32, gpu);
    fg::ops::detail::cross_entropy_forward_cuda(logits, targets, count, loss, lse);
    EXPECT_FALSE(fg::has_non_finite(loss)) << dtype_name(dtype);
    EXPECT_FALSE(fg::has_non_finite(lse)) << dtype_name(dtype);
    Tensor d = Tensor::full({11, 301}, NAN, dtype, gpu);
    fg::ops::detail::cross_entropy_backward_cuda(scalar(1.0, DType::F32, gpu), logits, targets, lse,
                                                 count, d);
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
  EXPECT_EQ(r.count.device(), gpu);
  EXPECT_EQ(r.count.item(), 0);
  EXPECT_EQ(r.loss.item(), 0.0);
  Tensor d = cross_entropy_backward(scalar(1.0, DType::F32, gpu), logits, targets, r.lse, r.count);
  EXPECT_EQ(fg::max_abs_diff(d, Tensor::zeros({3, 3})), 0.0);
}

TEST(CrossEntropyCudaEdge, CountTargetsMatchesCpu) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  for (int64_t n : {0, 1, 255, 256, 257, 5000}) {
    Tensor targets = random_targets(n, 7, 21 + n);
    Tensor c = count_targets(targets.to(gpu));
    EXPECT_EQ(c.device(), gpu);
    EXPECT_EQ(c.dtype(), DType::I32);
    EXPECT_EQ(c.item(), count_targets(targets).item()) << n;
  }
}

TEST(CrossEntropyCudaEdge, GivenCountMatchesCpu) {
  FG_REQUIRE_GPU();
  // A chunk dividing by a larger batch count, a wrong count and count 0, with a
  // dloss in another dtype than the loss: all as on the CPU.
  Device gpu = Device::cuda(0);
  Generator gen(23);
  Tensor logits = Tensor::randn({9, 333}, gen, DType::F32, gpu);
  Tensor targets = random_targets(9, 333, 24);
  for (int32_t c : {100, 1, 0}) {
    fg::ops::CrossEntropyOut ref = cross_entropy_forward(f64(logits), targets, count_of(c));
    fg::ops::CrossEntropyOut r = cross_entropy_forward(logits, targets.to(gpu), count_of(c, gpu));
    EXPECT_TRUE(c == 0 ? r.loss.item() == 0.0 : close_rel(r.loss, ref.loss, 1e-5)) << c;
    Tensor dref = cross_entropy_backward(scalar(0.5), f64(logits), targets, ref.lse, count_of(c));
    Tensor d = cross_entropy_backward(scalar(0.5, DType::F64, gpu), logits, targets.to(gpu), r.lse,
                                      count_of(c, gpu));
    EXPECT_TRUE(c == 0 ? fg::max_abs_diff(d, dref) == 0.0 : close_rel(d, dref, 1e-5)) << c;
  }
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
  // is seen; a NaN logit makes its row's lse NaN. Rows of single values and of
  // 16-byte packs.
  Device gpu = Device::cuda(0);
  for (int64_t v : {1031, 1032}) {
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
    EXPECT_TRUE(close_rel(r.lse.slice(0, 0, 2), ref.lse.slice(0, 0, 2), 1e-6)) << v;
    EXPECT_TRUE(std::isnan(r.lse.to_vector()[2])) << v;
    EXPECT_TRUE(close_rel(r.loss, ref.loss, 1e-6)) << v;  // the NaN row is ignored
    Tensor dref =
        cross_entropy_backward(scalar(1.0, DType::F32), logits, targets, ref.lse, ref.count);
    Tensor d = cross_entropy_backward(scalar(1.0, DType::F32, gpu), logits.to(gpu),
                                      targets.to(gpu), r.lse, r.count);
    EXPECT_TRUE(close_rel(d, dref, 1e-6)) << v;
    Tensor inplace = logits.to(gpu);
    fg::ops::CrossEntropyOut w = cross_entropy_with_grad(inplace, targets.to(gpu), Tensor(),
                                                         scalar(1.0, DType::F32, gpu));
    EXPECT_TRUE(close_rel(w.loss, ref.loss, 1e-6)) << v;
    EXPECT_TRUE(close_rel(inplace, dref, 1e-6)) << v;
  }
}

TEST(CrossEntropyCudaEdge, DeviceMismatchIsAnError) {
  FG_REQUIRE_GPU();
  Tensor logits = Tensor::zeros({2, 3}, DType::F32, Device::cuda(0));
  EXPECT_FG_ERROR(cross_entropy_forward(logits, Tensor::from_ints({0, 1}, {2})),
                  "cross_entropy: logits is on cuda:0 but targets is on cpu");
}

}  // namespace
