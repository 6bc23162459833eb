// linear: forward and backward on hand-computed values, leading dims, error
// messages; CUDA forward and backward against the CPU in f64 (f32, bf16).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ops/linear/linear.h"
#include "test_util.h"

using fg::test::f64;
using fg::test::poison_pool;

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;
using fg::ops::linear_backward;
using fg::ops::linear_forward;

namespace {

TEST(Linear, ForwardHandComputed) {
  Tensor x = Tensor::from_vector({1, 2, 3, -1, 0, 2}, {2, 3});    // (2, 3)
  Tensor w = Tensor::from_vector({1, 0, 1, 0.5, -1, 2}, {2, 3});  // (out 2, in 3)
  Tensor b = Tensor::from_vector({0.25, -3}, {2});
  // rows: [1+3, 0.5-2+6] and [-1+2, -0.5+4]
  EXPECT_EQ(linear_forward(x, w, Tensor()).to_vector(), (std::vector<double>{4, 4.5, 1, 3.5}));
  EXPECT_EQ(linear_forward(x, w, b).to_vector(), (std::vector<double>{4.25, 1.5, 1.25, 0.5}));
  Tensor r = Tensor::from_vector({1, -1, 2, 0.5}, {2, 2});  // a residual added by the product
  EXPECT_EQ(linear_forward(x, w, b, r).to_vector(), (std::vector<double>{5.25, 0.5, 3.25, 1}));
  EXPECT_EQ(r.to_vector(), (std::vector<double>{1, -1, 2, 0.5}));
}

TEST(Linear, BackwardHandComputed) {
  Tensor x = Tensor::from_vector({1, 2, 3, -1, 0, 2}, {2, 3}, DType::F64);
  Tensor w = Tensor::from_vector({1, 0, 1, 0.5, -1, 2}, {2, 3}, DType::F64);
  Tensor dy = Tensor::from_vector({1, 2, -1, 0.5}, {2, 2}, DType::F64);
  fg::ops::LinearGrads g = linear_backward(dy, x, w, true);
  // dx = dy @ W
  EXPECT_EQ(g.dx.to_vector(), (std::vector<double>{2, -2, 5, -0.75, -0.5, 0}));
  // dW = dy^T @ x
  EXPECT_EQ(g.dweight.to_vector(), (std::vector<double>{2, 2, 1, 1.5, 4, 7}));
  EXPECT_EQ(g.dbias.to_vector(), (std::vector<double>{0, 2.5}));
  EXPECT_FALSE(linear_backward(dy, x, w, false).dbias.defined());
}

TEST(Linear, BackwardIntoAGivenBuffer) {
  // dW written into (then added to) a buffer of a wider dtype, and returned.
  Tensor x = Tensor::from_vector({1, 2, 3, -1, 0, 2}, {2, 3}, DType::F32);
  Tensor w = Tensor::from_vector({1, 0, 1, 0.5, -1, 2}, {2, 3}, DType::F32);
  Tensor dy = Tensor::from_vector({1, 2, -1, 0.5}, {2, 2}, DType::F32);
  Tensor into = Tensor::full({2, 3}, NAN, DType::F64);
  fg::ops::LinearGrads g = linear_backward(dy, x, w, false, into);
  EXPECT_EQ(g.dweight.raw_data(), into.raw_data());
  EXPECT_EQ(into.to_vector(), (std::vector<double>{2, 2, 1, 1.5, 4, 7}));
  linear_backward(dy, x, w, false, into, true);
  EXPECT_EQ(into.to_vector(), (std::vector<double>{4, 4, 2, 3, 8, 14}));
  EXPECT_FG_ERROR(linear_backward(dy, x, w, false, Tensor::zeros({3, 2}, DType::F64)),
                  "linear_backward: dweight_into is (3, 2) but expected (2, 3)");
}

TEST(Linear, WeightGradAloneIsBackwardsDweight) {
  // linear_weight_grad: dy^T @ x as linear_backward gives it, fresh or into a buffer.
  Generator gen(2);
  Tensor x = Tensor::randn({2, 3, 4}, gen, DType::F64);
  Tensor w = Tensor::randn({5, 4}, gen, DType::F64);
  Tensor dy = Tensor::randn({2, 3, 5}, gen, DType::F64);
  const Tensor want = linear_backward(dy, x, w, false).dweight;
  EXPECT_EQ(fg::max_abs_diff(fg::ops::linear_weight_grad(dy, x, w), want), 0.0);
  Tensor into = Tensor::full({5, 4}, NAN, DType::F64);
  EXPECT_EQ(fg::ops::linear_weight_grad(dy, x, w, into).raw_data(), into.raw_data());
  EXPECT_EQ(fg::max_abs_diff(into, want), 0.0);
  EXPECT_FG_ERROR(fg::ops::linear_weight_grad(Tensor::zeros({2, 3, 4}, DType::F64), x, w),
                  "linear_weight_grad: dy is (2, 3, 4) but x is (2, 3, 4) and weight (5, 4)");
  EXPECT_FG_ERROR(fg::ops::linear_weight_grad(dy, x, w, Tensor::zeros({4, 5}, DType::F64)),
                  "linear_weight_grad: dweight_into is (4, 5) but expected (5, 4)");
}

TEST(Linear, LeadingDimsAreRows) {
  Generator gen(1);
  Tensor x = Tensor::randn({3, 5, 7}, gen, DType::F64);
  Tensor w = Tensor::randn({11, 7}, gen, DType::F64);
  Tensor b = Tensor::randn({11}, gen, DType::F64);
  Tensor y = linear_forward(x, w, b);
  EXPECT_EQ(y.shape(), (Shape{3, 5, 11}));
  Tensor y2 = linear_forward(x.view({15, 7}), w, b);
  EXPECT_EQ(fg::max_abs_diff(y.view({15, 11}), y2), 0.0);
  // A transposed (non-contiguous) x gives the same as its contiguous copy.
  Tensor xt = Tensor::randn({7, 4}, gen, DType::F64).transpose(0, 1);
  EXPECT_EQ(fg::max_abs_diff(linear_forward(xt, w, b), linear_forward(xt.contiguous(), w, b)), 0.0);
  fg::ops::LinearGrads g = linear_backward(Tensor::randn({3, 5, 11}, gen, DType::F64), x, w, true);
  EXPECT_EQ(g.dx.shape(), x.shape());
  EXPECT_EQ(g.dweight.shape(), w.shape());
  EXPECT_EQ(g.dbias.shape(), (Shape{11}));
}

TEST(Linear, ErrorsNameBothSides) {
  Tensor x = Tensor::zeros({4, 7, 33}), w = Tensor::zeros({96, 32});
  EXPECT_FG_ERROR(linear_forward(x, w, Tensor()), "linear: x is (4, 7, 33) but weight is (96, 32)");
  EXPECT_FG_ERROR(linear_forward(x, Tensor::zeros({96, 33}), Tensor::zeros({95})),
                  "linear: bias is (95,) but weight is (96, 33)");
  EXPECT_FG_ERROR(linear_forward(x, Tensor::zeros({96, 33}, DType::F64), Tensor()),
                  "linear: x is f32 but weight is f64");
  EXPECT_FG_ERROR(linear_forward(x, Tensor::zeros({33}), Tensor()), "weight must be (out, in)");
  EXPECT_FG_ERROR(linear_forward(Tensor(), w, Tensor()), "linear: x is undefined");
  EXPECT_FG_ERROR(linear_forward(x, Tensor::zeros({96, 33}), Tensor(), Tensor::zeros({4, 7, 95})),
                  "linear: residual is (4, 7, 95) but x @ weight^T is (4, 7, 96)");
  EXPECT_FG_ERROR(linear_backward(Tensor::zeros({4, 7, 95}), x, Tensor::zeros({96, 33}), true),
                  "linear_backward: dy is (4, 7, 95) but x (4, 7, 33) @ weight^T (96, 33) is "
                  "(4, 7, 96)");
}

// ---------------------------------------------------------------------------
// CUDA against the CPU in f64 on the same (rounded) inputs.

struct LinearCase {
  Shape x;
  int64_t out;
};

std::string case_name(const LinearCase& c) {
  std::string s = "x";
  for (int64_t d : c.x) s += "_" + std::to_string(d);
  return s + "_out" + std::to_string(c.out);
}

class LinearCuda : public ::testing::TestWithParam<LinearCase> {};

void check_linear(const LinearCase& c, DType dtype, double tol, bool bias) {
  Device gpu = Device::cuda(0);
  Generator gen(7 + c.out);
  Tensor x = Tensor::randn(c.x, gen, dtype, gpu);
  Tensor w = Tensor::randn({c.out, c.x.back()}, gen, dtype, gpu, 0.0, 0.2);
  Tensor b = bias ? Tensor::randn({c.out}, gen, dtype, gpu) : Tensor();
  Shape y_shape = c.x;
  y_shape.back() = c.out;
  Tensor dy = Tensor::randn(y_shape, gen, dtype, gpu);

  Tensor y_ref = linear_forward(f64(x), f64(w), bias ? f64(b) : Tensor());
  // With a residual added by the product (the GEMM's epilogue on the GPU).
  Tensor r = Tensor::randn(y_shape, gen, dtype, gpu);
  Tensor yr_ref = linear_forward(f64(x), f64(w), bias ? f64(b) : Tensor(), f64(r));
  poison_pool({y_shape}, dtype, gpu);
  Tensor yr = linear_forward(x, w, b, r);
  EXPECT_FALSE(fg::has_non_finite(yr));
  EXPECT_TRUE(close_rel(yr, yr_ref, tol)) << "y + residual, bias " << bias;
  fg::ops::LinearGrads g_ref = linear_backward(f64(dy), f64(x), f64(w), bias);

  poison_pool({y_shape}, dtype, gpu);
  Tensor y = linear_forward(x, w, b);
  EXPECT_TRUE(y.is_cuda());
  EXPECT_EQ(y.dtype(), dtype);
  EXPECT_FALSE(fg::has_non_finite(y));
  EXPECT_TRUE(close_rel(y, y_ref, tol)) << "y, bias " << bias;

  poison_pool({c.x, w.shape(), {c.out}}, dtype, gpu);
  fg::ops::LinearGrads g = linear_backward(dy, x, w, bias);
  EXPECT_FALSE(fg::has_non_finite(g.dx));
  EXPECT_FALSE(fg::has_non_finite(g.dweight));
  EXPECT_TRUE(close_rel(g.dx, g_ref.dx, tol)) << "dx";
  EXPECT_TRUE(close_rel(g.dweight, g_ref.dweight, tol)) << "dweight";
  EXPECT_EQ(g.dbias.defined(), bias);
  if (bias) {
    EXPECT_EQ(g.dbias.dtype(), dtype);
    EXPECT_FALSE(fg::has_non_finite(g.dbias));
    EXPECT_TRUE(close_rel(g.dbias, g_ref.dbias, tol)) << "dbias";
  }
}

TEST_P(LinearCuda, F32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_linear(GetParam(), DType::F32, 1e-5, true);
  check_linear(GetParam(), DType::F32, 1e-5, false);
}

TEST_P(LinearCuda, Bf16MatchesCpu) {
  FG_REQUIRE_GPU();
  check_linear(GetParam(), DType::BF16, 1e-2, true);
  check_linear(GetParam(), DType::BF16, 1e-2, false);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearCuda,
                         ::testing::Values(LinearCase{{1, 1}, 1}, LinearCase{{3, 5, 7}, 11},
                                           LinearCase{{2, 37, 65}, 97}, LinearCase{{1025, 33}, 3},
                                           LinearCase{{5, 3, 257}, 301},
                                           LinearCase{{2, 129, 96}, 288}),
                         [](const auto& info) { return case_name(info.param); });

TEST(LinearCudaEdge, BiasGradSumsManyRows) {
  FG_REQUIRE_GPU();
  // Many rows, few columns: the column sum must reduce over rows in fp32.
  Device gpu = Device::cuda(0);
  Tensor x = Tensor::ones({4099, 3}, DType::F32, gpu), w = Tensor::ones({5, 3}, DType::F32, gpu);
  Tensor dy = Tensor::full({4099, 5}, 0.5, DType::BF16, gpu);
  fg::ops::LinearGrads g = linear_backward(dy, x.to(DType::BF16), w.to(DType::BF16), true);
  // 2049.5 rounds to 2048 in bf16 (8 bits of mantissa).
  for (double v : g.dbias.to_vector()) EXPECT_EQ(v, 2048.0);
  fg::ops::LinearGrads g32 = linear_backward(dy.to(DType::F32), x, w, true);
  for (double v : g32.dbias.to_vector()) EXPECT_EQ(v, 2049.5);
}

TEST(LinearCudaEdge, DeviceMismatchIsAnError) {
  FG_REQUIRE_GPU();
  Tensor x = Tensor::zeros({2, 3}, DType::F32, Device::cuda(0));
  EXPECT_FG_ERROR(linear_forward(x, Tensor::zeros({4, 3}), Tensor()),
                  "linear: x is on cuda:0 but weight is on cpu");
}

}  // namespace
