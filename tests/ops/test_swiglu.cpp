// swiglu: forward and backward on hand-computed values, error messages; CUDA
// against the CPU in f64 (f32, bf16) over odd F, NaN poison.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ops/gemm/gemm_hopper.h"
#include "ops/linear/linear.h"
#include "ops/swiglu/swiglu.h"
#include "test_util.h"

using fg::test::f64;
using fg::test::poison_pool;

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;
using fg::ops::gate_up_swiglu;
using fg::ops::linear_forward;
using fg::ops::swiglu_backward;
using fg::ops::swiglu_forward;

namespace {

double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

TEST(Swiglu, ForwardHandComputed) {
  // Two rows of [g0 g1 | u0 u1].
  Tensor gu = Tensor::from_vector({0, 1, 5, 3, -2, 4, 0.5, -1}, {2, 4}, DType::F64);
  Tensor out = swiglu_forward(gu);
  EXPECT_EQ(out.shape(), (Shape{2, 2}));
  std::vector<double> expect = {0 * 5, 1 * sigmoid(1) * 3, -2 * sigmoid(-2) * 0.5,
                                4 * sigmoid(4) * -1};
  std::vector<double> got = out.to_vector();
  for (size_t i = 0; i < expect.size(); ++i) EXPECT_NEAR(got[i], expect[i], 1e-15) << i;
}

TEST(Swiglu, BackwardHandComputed) {
  double g = 0.7, u = -1.3, d = 2.0;
  Tensor gu = Tensor::from_vector({g, u}, {1, 2}, DType::F64);
  Tensor dgu = swiglu_backward(Tensor::from_vector({d}, {1, 1}, DType::F64), gu);
  double s = sigmoid(g);
  std::vector<double> got = dgu.to_vector();
  EXPECT_NEAR(got[0], d * u * (s + g * s * (1 - s)), 1e-15);  // d/dg of g s(g) u
  EXPECT_NEAR(got[1], d * g * s, 1e-15);                      // d/du
}

TEST(Swiglu, LeadingDimsAndFloat32) {
  Generator gen(2);
  Tensor gu = Tensor::randn({3, 5, 14}, gen, DType::F64);
  Tensor out = swiglu_forward(gu);
  EXPECT_EQ(out.shape(), (Shape{3, 5, 7}));
  Tensor out32 = swiglu_forward(gu.to(DType::F32));
  EXPECT_EQ(out32.dtype(), DType::F32);
  EXPECT_TRUE(close_rel(out32, out, 1e-6));
  Tensor dout = Tensor::randn({3, 5, 7}, gen, DType::F64);
  EXPECT_TRUE(close_rel(swiglu_backward(dout.to(DType::F32), gu.to(DType::F32)),
                        swiglu_backward(dout, gu), 1e-6));
  // A non-contiguous gu gives the same as its contiguous copy.
  Tensor gut = Tensor::randn({6, 4}, gen, DType::F64).transpose(0, 1);  // (4, 6)
  EXPECT_EQ(fg::max_abs_diff(swiglu_forward(gut), swiglu_forward(gut.contiguous())), 0.0);
}

TEST(Swiglu, SaturatedGatesStayFinite) {
  Tensor gu = Tensor::from_vector({-100, 100, 1, 1}, {1, 4});
  std::vector<double> out = swiglu_forward(gu).to_vector();
  EXPECT_EQ(out[0], 0.0);
  EXPECT_NEAR(out[1], 100.0, 1e-4);
  EXPECT_FALSE(fg::has_non_finite(swiglu_backward(Tensor::ones({1, 2}), gu)));
}

TEST(Swiglu, ErrorsNameTheShapes) {
  EXPECT_FG_ERROR(swiglu_forward(Tensor::zeros({2, 5})),
                  "swiglu: gu is (2, 5) but its last dimension must be even");
  EXPECT_FG_ERROR(swiglu_forward(Tensor()), "swiglu: gu is undefined");
  EXPECT_FG_ERROR(swiglu_backward(Tensor::zeros({2, 4}), Tensor::zeros({2, 6})),
                  "swiglu_backward: dout is (2, 4) but gu is (2, 6)");
  EXPECT_FG_ERROR(swiglu_backward(Tensor::zeros({2, 3}, DType::F64), Tensor::zeros({2, 6})),
                  "swiglu_backward: dout is f64 but gu is f32");
}

TEST(GateUpSwiglu, IsLinearThenSwiglu) {
  Generator gen(5);
  Tensor x = Tensor::randn({2, 3, 8}, gen, DType::F64);
  Tensor w = Tensor::randn({12, 8}, gen, DType::F64);
  fg::ops::GateUpSwiGLU r = gate_up_swiglu(x, w);
  EXPECT_EQ(r.gu.shape(), (Shape{2, 3, 12}));
  EXPECT_EQ(r.out.shape(), (Shape{2, 3, 6}));
  Tensor gu = linear_forward(x, w, Tensor());
  EXPECT_EQ(fg::max_abs_diff(r.gu, gu), 0.0);
  EXPECT_EQ(fg::max_abs_diff(r.out, swiglu_forward(gu)), 0.0);
  EXPECT_FG_ERROR(gate_up_swiglu(x, Tensor::zeros({11, 8}, DType::F64)),
                  "gate_up_swiglu: x is (2, 3, 8) but w is (11, 8) (expected (2F, 8))");
}

// ---------------------------------------------------------------------------
// CUDA against the CPU in f64 on the same (rounded) inputs.

class SwigluCuda : public ::testing::TestWithParam<Shape> {};

std::string case_name(const Shape& s) {
  std::string n = "gu";
  for (int64_t d : s) n += "_" + std::to_string(d);
  return n;
}

void check_swiglu(const Shape& gu_shape, DType dtype, double tol) {
  Device gpu = Device::cuda(0);
  Generator gen(11 + gu_shape.back());
  Tensor gu = Tensor::randn(gu_shape, gen, dtype, gpu, 0.0, 2.0);
  Shape out_shape = gu_shape;
  out_shape.back() /= 2;
  Tensor dout = Tensor::randn(out_shape, gen, dtype, gpu);

  poison_pool({out_shape}, dtype, gpu);
  Tensor out = swiglu_forward(gu);
  EXPECT_TRUE(out.is_cuda());
  EXPECT_EQ(out.dtype(), dtype);
  EXPECT_FALSE(fg::has_non_finite(out));
  EXPECT_TRUE(close_rel(out, swiglu_forward(f64(gu)), tol)) << "out";

  poison_pool({gu_shape}, dtype, gpu);
  Tensor dgu = swiglu_backward(dout, gu);
  EXPECT_EQ(dgu.dtype(), dtype);
  EXPECT_FALSE(fg::has_non_finite(dgu));
  EXPECT_TRUE(close_rel(dgu, swiglu_backward(f64(dout), f64(gu)), tol)) << "dgu";
}

TEST_P(SwigluCuda, F32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_swiglu(GetParam(), DType::F32, 1e-5);
}

TEST_P(SwigluCuda, Bf16MatchesCpu) {
  FG_REQUIRE_GPU();
  check_swiglu(GetParam(), DType::BF16, 1e-2);
}

TEST_P(SwigluCuda, F64MatchesCpu) {
  FG_REQUIRE_GPU();
  check_swiglu(GetParam(), DType::F64, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SwigluCuda,
                         ::testing::Values(Shape{1, 2}, Shape{3, 5, 14}, Shape{13, 22},
                                           Shape{2, 37, 2002}, Shape{129, 690}, Shape{4, 7, 3, 6},
                                           Shape{1, 2048}, Shape{3, 4098}),
                         [](const auto& info) { return case_name(info.param); });

#ifdef FG_CUDA  // calls the CUDA entry points directly
TEST(SwigluCudaEdge, KernelsWriteEveryElement) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  Generator gen(12);
  for (DType dtype : {DType::F32, DType::BF16}) {
    Tensor gu = Tensor::randn({7, 9, 26}, gen, dtype, gpu);
    Tensor out = Tensor::full({7, 9, 13}, NAN, dtype, gpu);
    fg::ops::detail::swiglu_forward_cuda(gu, out);
    EXPECT_FALSE(fg::has_non_finite(out)) << dtype_name(dtype);
    Tensor dgu = Tensor::full({7, 9, 26}, NAN, dtype, gpu);
    fg::ops::detail::swiglu_backward_cuda(Tensor::ones({7, 9, 13}, dtype, gpu), gu, dgu);
    EXPECT_FALSE(fg::has_non_finite(dgu)) << dtype_name(dtype);
  }
}
#endif

#ifdef FG_CUDA  // calls the CUDA entry points directly
// The gate/up GEMM with SwiGLU in its epilogue (Hopper, bf16) against the CPU in f64 on the
// same inputs: rows that end mid-tile, F that ends mid-tile (192) or mid-box (200, 8), K not
// a multiple of the k tile (72). Outputs start as NaN: every element must be written.
struct GateUpCase {
  int64_t rows, d, f;
};

class GateUpSwigluCuda : public ::testing::TestWithParam<GateUpCase> {};

TEST_P(GateUpSwigluCuda, FusedMatchesCpu) {
  FG_REQUIRE_GPU();
  if (!fg::ops::detail::gemm_hopper_available()) GTEST_SKIP() << "needs Hopper and sm_90a";
  const GateUpCase c = GetParam();
  Device gpu = Device::cuda(0);
  Generator gen(31 + c.f);
  Tensor x = Tensor::randn({c.rows, c.d}, gen, DType::BF16, gpu);
  Tensor w = Tensor::randn({2 * c.f, c.d}, gen, DType::BF16, gpu, 0.0, 0.1);
  Tensor gu = Tensor::full({c.rows, 2 * c.f}, NAN, DType::BF16, gpu);
  Tensor out = Tensor::full({c.rows, c.f}, NAN, DType::BF16, gpu);
  ASSERT_TRUE(fg::ops::detail::gate_up_swiglu_cuda(x, w, gu, out));
  Tensor want_gu = linear_forward(f64(x), f64(w), Tensor());
  EXPECT_FALSE(fg::has_non_finite(gu));
  EXPECT_FALSE(fg::has_non_finite(out));
  EXPECT_TRUE(close_rel(gu, want_gu, 1e-2)) << "gu";
  EXPECT_TRUE(close_rel(out, swiglu_forward(want_gu), 1e-2)) << "out";
  // The public entry, leading dimensions kept, gives the same bits.
  fg::ops::GateUpSwiGLU r = gate_up_swiglu(x.reshape({1, c.rows, c.d}), w);
  EXPECT_EQ(r.out.shape(), (Shape{1, c.rows, c.f}));
  EXPECT_EQ(fg::max_abs_diff(r.out.reshape({c.rows, c.f}), out), 0.0);
  EXPECT_EQ(fg::max_abs_diff(r.gu.reshape({c.rows, 2 * c.f}), gu), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GateUpSwigluCuda,
                         ::testing::Values(GateUpCase{1, 64, 64}, GateUpCase{67, 72, 192},
                                           GateUpCase{300, 768, 200}, GateUpCase{5, 64, 8},
                                           GateUpCase{129, 768, 2048}, GateUpCase{1000, 384, 1024}),
                         [](const auto& info) {
                           const GateUpCase& c = info.param;
                           return "rows" + std::to_string(c.rows) + "_d" + std::to_string(c.d) +
                                  "_f" + std::to_string(c.f);
                         });

TEST(GateUpSwigluCudaEdge, OtherShapesTakeTheComposedPath) {
  FG_REQUIRE_GPU();
  // F = 6 is no whole 16-byte row of a half: the fused GEMM declines, the composition runs.
  Device gpu = Device::cuda(0);
  Generator gen(33);
  Tensor x = Tensor::randn({9, 64}, gen, DType::BF16, gpu);
  Tensor w = Tensor::randn({12, 64}, gen, DType::BF16, gpu, 0.0, 0.1);
  Tensor gu = Tensor::empty({9, 12}, DType::BF16, gpu),
         out = Tensor::empty({9, 6}, DType::BF16, gpu);
  EXPECT_FALSE(fg::ops::detail::gate_up_swiglu_cuda(x, w, gu, out));
  fg::ops::GateUpSwiGLU r = gate_up_swiglu(x, w);
  Tensor want_gu = linear_forward(f64(x), f64(w), Tensor());
  EXPECT_TRUE(close_rel(r.gu, want_gu, 1e-2));
  EXPECT_TRUE(close_rel(r.out, swiglu_forward(want_gu), 1e-2));
}
#endif

TEST(SwigluCudaEdge, DeviceMismatchIsAnError) {
  FG_REQUIRE_GPU();
  Tensor gu = Tensor::zeros({2, 6}, DType::F32, Device::cuda(0));
  EXPECT_FG_ERROR(swiglu_backward(Tensor::zeros({2, 3}), gu),
                  "swiglu_backward: dout is on cpu but gu is on cuda:0");
}

}  // namespace
