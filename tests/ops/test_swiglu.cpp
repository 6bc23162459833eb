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
using fg::ops::swiglu_down_backward;
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

TEST(SwigluDownBackward, IsTheProductThenSwigluBackward) {
  // dgu for y = swiglu(gu) @ w^T: dout = dy @ w by hand, then swiglu_backward.
  Generator gen(6);
  Tensor gu = Tensor::randn({2, 3, 8}, gen, DType::F64);
  Tensor w = Tensor::randn({5, 4}, gen, DType::F64);
  Tensor dy = Tensor::randn({2, 3, 5}, gen, DType::F64);
  std::vector<double> dyv = dy.to_vector(), wv = w.to_vector(), dout(6 * 4, 0.0);
  for (int r = 0; r < 6; ++r)
    for (int j = 0; j < 4; ++j)
      for (int k = 0; k < 5; ++k) dout[r * 4 + j] += dyv[r * 5 + k] * wv[k * 4 + j];
  Tensor want = swiglu_backward(Tensor::from_vector(dout, {2, 3, 4}, DType::F64), gu);
  Tensor got = swiglu_down_backward(dy, w, gu);
  EXPECT_EQ(got.shape(), (Shape{2, 3, 8}));
  EXPECT_LT(fg::max_abs_diff(got, want), 1e-14);
  EXPECT_FG_ERROR(swiglu_down_backward(dy, Tensor::zeros({5, 3}, DType::F64), gu),
                  "swiglu_down_backward: w_down is (5, 3) but gu is (2, 3, 8) (expected (D, 4))");
  EXPECT_FG_ERROR(swiglu_down_backward(Tensor::zeros({2, 3, 6}, DType::F64), w, gu),
                  "swiglu_down_backward: dy is (2, 3, 6) but gu is (2, 3, 8) and w_down (5, 4) "
                  "(expected dy (2, 3, 5))");
  EXPECT_FG_ERROR(swiglu_down_backward(dy, w.to(DType::F32), gu),
                  "swiglu_down_backward: dy is f64, w_down f32 and gu f64 (expected one dtype)");
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

// K = 4096 (64 k tiles) with F ending mid-tile is {200, 4096, 584}; {5000, 256, 1000} and
// {8448, 64, 2048} give each consumer several tiles (the epilogues' buffers and barriers reused):
// 4-8 in every block (8448 rows are 132 row tiles of 64, by 8 or 16 column tiles of 256). K past
// kMulticastMaxK runs the cooperative schedule: 4096, and the last, 1032 (17 k tiles, the last 8
// wide) with F ending mid-box and every block walking 2-4 of its 128 x 256 tiles.
constexpr GateUpCase kMlpShapes[] = {
    {1, 64, 64},       {67, 72, 192},    {300, 768, 200},   {5, 64, 8},       {129, 768, 2048},
    {1000, 384, 1024}, {200, 4096, 584}, {5000, 256, 1000}, {8448, 64, 2048}, {4224, 1032, 2000}};

std::string mlp_case_name(const ::testing::TestParamInfo<GateUpCase>& info) {
  const GateUpCase& c = info.param;
  return "rows" + std::to_string(c.rows) + "_d" + std::to_string(c.d) + "_f" + std::to_string(c.f);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GateUpSwigluCuda, ::testing::ValuesIn(kMlpShapes), mlp_case_name);

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

#ifdef FG_CUDA  // calls the CUDA entry points directly
// dgu = swiglu_backward(dy @ w_down, gu) as one GEMM with SwiGLU's backward in its epilogue
// (Hopper, bf16; w_down read as a (K, N) B) against the CPU in f64 on the same inputs, shapes
// as for the gate/up GEMM above. dgu starts as NaN: every element must be written.
class SwigluDownBackwardCuda : public ::testing::TestWithParam<GateUpCase> {};

TEST_P(SwigluDownBackwardCuda, FusedMatchesCpu) {
  FG_REQUIRE_GPU();
  if (!fg::ops::detail::gemm_hopper_available()) GTEST_SKIP() << "needs Hopper and sm_90a";
  const GateUpCase c = GetParam();
  Device gpu = Device::cuda(0);
  Generator gen(41 + c.f);
  Tensor dy = Tensor::randn({c.rows, c.d}, gen, DType::BF16, gpu);
  Tensor w = Tensor::randn({c.d, c.f}, gen, DType::BF16, gpu, 0.0, 0.1);
  Tensor gu = Tensor::randn({c.rows, 2 * c.f}, gen, DType::BF16, gpu, 0.0, 2.0);
  Tensor dgu = Tensor::full({c.rows, 2 * c.f}, NAN, DType::BF16, gpu);
  ASSERT_TRUE(fg::ops::detail::swiglu_down_backward_cuda(dy, w, gu, dgu));
  EXPECT_FALSE(fg::has_non_finite(dgu));
  const Tensor want = swiglu_down_backward(f64(dy), f64(w), f64(gu));
  EXPECT_TRUE(close_rel(dgu.slice(1, 0, c.f), want.slice(1, 0, c.f), 1e-2)) << "gate";
  EXPECT_TRUE(close_rel(dgu.slice(1, c.f, 2 * c.f), want.slice(1, c.f, 2 * c.f), 1e-2)) << "up";
  // The public entry, leading dimensions kept, gives the same bits.
  Tensor r =
      swiglu_down_backward(dy.reshape({1, c.rows, c.d}), w, gu.reshape({1, c.rows, 2 * c.f}));
  EXPECT_EQ(r.shape(), (Shape{1, c.rows, 2 * c.f}));
  EXPECT_EQ(fg::max_abs_diff(r.reshape({c.rows, 2 * c.f}), dgu), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SwigluDownBackwardCuda, ::testing::ValuesIn(kMlpShapes),
                         mlp_case_name);

TEST(SwigluDownBackwardCudaEdge, OtherShapesTakeTheComposedPath) {
  FG_REQUIRE_GPU();
  // F = 6 and D = 12 are no whole 16-byte rows: the fused GEMM declines, the composition runs.
  Device gpu = Device::cuda(0);
  Generator gen(43);
  Tensor dy = Tensor::randn({9, 12}, gen, DType::BF16, gpu);
  Tensor w = Tensor::randn({12, 6}, gen, DType::BF16, gpu, 0.0, 0.1);
  Tensor gu = Tensor::randn({9, 12}, gen, DType::BF16, gpu);
  Tensor dgu = Tensor::empty({9, 12}, DType::BF16, gpu);
  EXPECT_FALSE(fg::ops::detail::swiglu_down_backward_cuda(dy, w, gu, dgu));
  EXPECT_TRUE(close_rel(swiglu_down_backward(dy, w, gu),
                        swiglu_down_backward(f64(dy), f64(w), f64(gu)), 1e-2));
}
#endif

TEST(SwigluCudaEdge, DeviceMismatchIsAnError) {
  FG_REQUIRE_GPU();
  Tensor gu = Tensor::zeros({2, 6}, DType::F32, Device::cuda(0));
  EXPECT_FG_ERROR(swiglu_backward(Tensor::zeros({2, 3}), gu),
                  "swiglu_backward: dout is on cpu but gu is on cuda:0");
}

}  // namespace
