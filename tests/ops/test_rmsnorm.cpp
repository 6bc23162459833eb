// rmsnorm: forward and backward on hand-computed values, layouts, error messages;
// the CUDA row kernels (forward, apply, backward) against the CPU in f32, bf16 and
// f64, into NaN-poisoned buffers, on odd and aligned row lengths.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ops/add/add.h"
#include "ops/rmsnorm/rmsnorm.h"
#include "test_util.h"

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;
using fg::ops::rmsnorm_backward;
using fg::ops::rmsnorm_forward;
namespace detail = fg::ops::detail;

namespace {

// dweight into a given buffer: the parameter's (wider) gradient, written then added to,
// returned as g.dweight; a buffer of another shape or dtype is named in the error.
TEST(RMSNorm, BackwardIntoAGivenBuffer) {
  Generator gen(4);
  Tensor x = Tensor::randn({5, 7}, gen, DType::F32), w = Tensor::randn({7}, gen, DType::F32);
  Tensor dy = Tensor::randn({5, 7}, gen, DType::F32);
  const Tensor rstd = rmsnorm_forward(x, w, 1e-5).rstd;
  const Tensor ref = rmsnorm_backward(dy, x, w, rstd).dweight;
  Tensor into = Tensor::full({7}, NAN, DType::F32);
  fg::ops::RMSNormGrads g = rmsnorm_backward(dy, x, w, rstd, into);
  EXPECT_EQ(g.dweight.raw_data(), into.raw_data());
  EXPECT_EQ(fg::max_abs_diff(into, ref), 0.0);
  rmsnorm_backward(dy, x, w, rstd, into, true);
  EXPECT_LE(fg::max_abs_diff(into, fg::ops::add_forward(ref, ref)), 1e-6);
  EXPECT_FG_ERROR(rmsnorm_backward(dy, x, w, rstd, Tensor::zeros({6})),
                  "rmsnorm_backward: dweight_into is (6,) but expected (7,)");
  EXPECT_FG_ERROR(rmsnorm_backward(dy, x, w, rstd, Tensor::zeros({7}, DType::F64)),
                  "rmsnorm_backward: dweight_into is f64 but must be f32");
}

TEST(RMSNorm, ForwardHandComputed) {
  // Row 0: mean(x^2) = 30/4; row 1: mean(x^2) = 25/4, rstd = 0.4 exactly.
  Tensor x = Tensor::from_vector({1, 2, 3, 4, 3, -4, 0, 0}, {2, 4}, DType::F64);
  Tensor w = Tensor::from_vector({1, 0.5, 2, -1}, {4}, DType::F64);
  fg::ops::RMSNormOut out = rmsnorm_forward(x, w, 0.0);
  const double r0 = 1 / std::sqrt(7.5);
  std::vector<double> expected = {r0, r0, 6 * r0, -4 * r0, 1.2, -0.8, 0, 0};
  std::vector<double> y = out.y.to_vector();
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], expected[i], 1e-15) << i;
  EXPECT_NEAR(out.rstd.to_vector()[0], r0, 1e-15);
  EXPECT_EQ(out.rstd.to_vector()[1], 0.4);
  EXPECT_EQ(out.rstd.dtype(), DType::F64);
}

TEST(RMSNorm, EpsKeepsZeroRowsFinite) {
  fg::ops::RMSNormOut out = rmsnorm_forward(Tensor::zeros({3, 5}), Tensor::ones({5}), 1e-6);
  EXPECT_EQ(fg::sum(out.y), 0.0);
  EXPECT_NEAR(out.rstd.to_vector()[2], 1000.0, 1e-3);
  EXPECT_EQ(out.rstd.dtype(), DType::F32);  // statistics in f32 for f32 inputs
}

TEST(RMSNorm, BackwardHandComputed) {
  // D = 1, eps 0: y = sign(x) * w, so dx = 0 and dw = sum(dy * sign(x)).
  Tensor x = Tensor::from_vector({2, -3, 0.5}, {3, 1}, DType::F64);
  Tensor w = Tensor::from_vector({1.5}, {1}, DType::F64);
  Tensor dy = Tensor::from_vector({1, 2, 3}, {3, 1}, DType::F64);
  fg::ops::RMSNormOut out = rmsnorm_forward(x, w, 0.0);
  fg::ops::RMSNormGrads g = rmsnorm_backward(dy, x, w, out.rstd);
  for (double v : g.dx.to_vector()) EXPECT_NEAR(v, 0.0, 1e-15);
  EXPECT_NEAR(g.dweight.item(), 2.0, 1e-15);
}

TEST(RMSNorm, BackwardIsOrthogonalToTheRow) {
  // With weight 1 and eps 0, y is scale-invariant in x, so dx . x = 0 for every row.
  Generator gen(3);
  Tensor x = Tensor::randn({6, 11}, gen, DType::F64);
  Tensor dy = Tensor::randn({6, 11}, gen, DType::F64);
  Tensor w = Tensor::ones({11}, DType::F64);
  fg::ops::RMSNormGrads g = rmsnorm_backward(dy, x, w, rmsnorm_forward(x, w, 0.0).rstd);
  std::vector<double> dx = g.dx.to_vector(), xv = x.to_vector();
  for (int r = 0; r < 6; ++r) {
    double dot = 0;
    for (int c = 0; c < 11; ++c) dot += dx[r * 11 + c] * xv[r * 11 + c];
    EXPECT_NEAR(dot, 0.0, 1e-12) << "row " << r;
  }
}

TEST(RMSNorm, LeadingDimsAreRowsAndLayoutDoesNotMatter) {
  Generator gen(5);
  Tensor x = Tensor::randn({3, 5, 7}, gen, DType::F64);
  Tensor w = Tensor::randn({7}, gen, DType::F64);
  fg::ops::RMSNormOut a = rmsnorm_forward(x, w, 1e-5);
  fg::ops::RMSNormOut b = rmsnorm_forward(x.view({15, 7}), w, 1e-5);
  EXPECT_EQ(a.y.shape(), x.shape());
  EXPECT_EQ(a.rstd.shape(), (Shape{15}));
  EXPECT_EQ(fg::max_abs_diff(a.y.view({15, 7}), b.y), 0.0);
  Tensor xt = Tensor::randn({7, 4}, gen, DType::F64).transpose(0, 1);  // (4, 7), strided
  EXPECT_EQ(
      fg::max_abs_diff(rmsnorm_forward(xt, w, 1e-5).y, rmsnorm_forward(xt.contiguous(), w, 1e-5).y),
      0.0);
}

TEST(RMSNorm, F32AgreesWithF64) {
  Generator gen(9);
  Tensor x = Tensor::randn({13, 301}, gen, DType::F64);
  Tensor w = Tensor::randn({301}, gen, DType::F64);
  Tensor dy = Tensor::randn({13, 301}, gen, DType::F64);
  auto f32 = [](const Tensor& t) { return t.to(DType::F32); };
  fg::ops::RMSNormOut o64 = rmsnorm_forward(x, w, 1e-5),
                      o32 = rmsnorm_forward(f32(x), f32(w), 1e-5);
  EXPECT_TRUE(close_rel(o32.y, o64.y, 1e-6));
  fg::ops::RMSNormGrads g64 = rmsnorm_backward(dy, x, w, o64.rstd);
  fg::ops::RMSNormGrads g32 = rmsnorm_backward(f32(dy), f32(x), f32(w), o32.rstd);
  EXPECT_TRUE(close_rel(g32.dx, g64.dx, 1e-5));
  EXPECT_TRUE(close_rel(g32.dweight, g64.dweight, 1e-5));
}

TEST(RMSNorm, BackwardRebuildsTheNormalizedRows) {
  // With y given, backward also writes x * rstd * weight: what forward returned.
  Generator gen(17);
  const int64_t rows = 5, D = 9;
  Tensor x = Tensor::randn({rows, D}, gen, DType::F64);
  Tensor w = Tensor::uniform({D}, gen, 0.5, 1.5, DType::F64);
  Tensor dy = Tensor::randn({rows, D}, gen, DType::F64);
  fg::ops::RMSNormOut f = rmsnorm_forward(x, w, 1e-5);
  fg::ops::RMSNormGrads ref = rmsnorm_backward(dy, x, w, f.rstd);
  Tensor dx = Tensor::empty({rows, D}, DType::F64), dw = Tensor::empty({D}, DType::F64);
  Tensor y = Tensor::full({rows, D}, NAN, DType::F64);
  detail::rmsnorm_rows_backward(dy, Tensor(), x, w, f.rstd, dx, dw, y);
  EXPECT_EQ(fg::max_abs_diff(y, f.y), 0.0);
  EXPECT_EQ(fg::max_abs_diff(dx, ref.dx), 0.0);
  EXPECT_EQ(fg::max_abs_diff(dw, ref.dweight), 0.0);
}

TEST(RMSNorm, ErrorsNameBothSides) {
  Tensor x = Tensor::zeros({3, 5, 7});
  EXPECT_FG_ERROR(rmsnorm_forward(x, Tensor::zeros({6}), 1e-5),
                  "rmsnorm: weight is (6,) but expected (7,)");
  EXPECT_FG_ERROR(rmsnorm_forward(x, Tensor::zeros({7}, DType::F64), 1e-5),
                  "rmsnorm: weight is f64 but expected f32");
  EXPECT_FG_ERROR(rmsnorm_forward(Tensor::zeros({3, 0}), Tensor::zeros({0}), 1e-5),
                  "needs a non-empty last dimension");
  EXPECT_FG_ERROR(rmsnorm_forward(Tensor(), Tensor::zeros({7}), 1e-5), "rmsnorm: x is undefined");
  EXPECT_FG_ERROR(rmsnorm_forward(x, Tensor::zeros({7}), -1.0), "rmsnorm: eps is -1");
  EXPECT_FG_ERROR(rmsnorm_forward(x.to(DType::BF16), Tensor::zeros({7}, DType::BF16), 1e-5),
                  "bf16 is not supported here");
  Tensor w = Tensor::ones({7}), rstd = Tensor::ones({15});
  EXPECT_FG_ERROR(rmsnorm_backward(Tensor::zeros({3, 5, 6}), x, w, rstd),
                  "rmsnorm_backward: dy is (3, 5, 6) but x is (3, 5, 7)");
  EXPECT_FG_ERROR(rmsnorm_backward(x, x, w, Tensor::ones({14})),
                  "rmsnorm_backward: rstd is (14,) but expected (15,)");
  EXPECT_FG_ERROR(rmsnorm_backward(x, x, w, Tensor::ones({15}, DType::F64)),
                  "rmsnorm_backward: rstd is f64 but expected f32");
}

// ---------------------------------------------------------------------------
// CUDA against the CPU. The GPU side writes into NaN-filled buffers through the
// row kernels directly, so an element a kernel skips shows up as NaN.

struct NormCase {
  int64_t rows, D;
};

std::string case_name(const ::testing::TestParamInfo<NormCase>& info) {
  return "rows" + std::to_string(info.param.rows) + "_D" + std::to_string(info.param.D);
}

Tensor nan_tensor(const Shape& shape, DType dtype, Device device) {
  return Tensor::full(shape, NAN, dtype, device);
}

// The CPU computes in f32 for f32 and bf16 (on the bf16-rounded values), else in f64.
Tensor on_cpu(const Tensor& t) {
  return t.to(Device::cpu(), t.dtype() == DType::F64 ? DType::F64 : DType::F32);
}

// rows x D inputs on the GPU drawn in `dtype`; `offset` > 0 starts x one element into
// its buffer, so 16-byte vector loads are not possible and the scalar path runs.
struct NormInputs {
  Tensor x, w, dy, dh;
};
NormInputs make_inputs(const NormCase& c, DType dtype, bool misaligned = false) {
  Device gpu = Device::cuda(0);
  Generator gen(11 + c.rows + c.D);
  Tensor x = Tensor::randn({c.rows, c.D}, gen, dtype, gpu);
  if (misaligned) {
    Tensor flat = Tensor::empty({c.rows * c.D + 1}, dtype, gpu);
    flat.slice(0, 1, c.rows * c.D + 1).view({c.rows, c.D}).copy_(x);
    x = flat.slice(0, 1, c.rows * c.D + 1).view({c.rows, c.D});
  }
  return {x, Tensor::uniform({c.D}, gen, 0.5, 1.5, dtype, gpu),
          Tensor::randn({c.rows, c.D}, gen, dtype, gpu),
          Tensor::randn({c.rows, c.D}, gen, dtype, gpu)};
}

void check_rmsnorm_cuda(const NormCase& c, DType dtype, double tol, bool misaligned = false) {
  const Device gpu = Device::cuda(0);
  const double eps = 1e-5;
  NormInputs in = make_inputs(c, dtype, misaligned);
  const DType stat = detail::rmsnorm_stat_dtype(dtype);

  // Forward.
  fg::ops::RMSNormOut ref = rmsnorm_forward(on_cpu(in.x), on_cpu(in.w), eps);
  Tensor y = nan_tensor({c.rows, c.D}, dtype, gpu), rstd = nan_tensor({c.rows}, stat, gpu);
  detail::rmsnorm_rows_forward(in.x, Tensor(), in.w, eps, Tensor(), y, rstd);
  EXPECT_TRUE(close_rel(y, ref.y, tol)) << "y";
  EXPECT_TRUE(close_rel(rstd, ref.rstd, tol)) << "rstd";

  // The public entry gives the same, in the right dtypes.
  fg::ops::RMSNormOut pub = rmsnorm_forward(in.x, in.w, eps);
  EXPECT_TRUE(pub.y.is_cuda());
  EXPECT_EQ(pub.y.dtype(), dtype);
  EXPECT_EQ(pub.rstd.dtype(), stat);
  EXPECT_EQ(fg::max_abs_diff(pub.y, y), 0.0);

  // Apply: the normalized rows again from the saved rstd.
  Tensor y2 = nan_tensor({c.rows, c.D}, dtype, gpu);
  detail::rmsnorm_rows_apply(in.x, in.w, rstd, y2);
  EXPECT_EQ(fg::max_abs_diff(y2, y), 0.0) << "apply differs from forward";

  // Backward, without and with dh, against the CPU on the same saved rstd.
  for (bool with_dh : {false, true}) {
    Tensor dh = with_dh ? in.dh : Tensor();
    fg::ops::RMSNormGrads g_ref = detail::rmsnorm_backward_checked(
        "ref", on_cpu(in.dy), with_dh ? on_cpu(in.dh) : Tensor(), "x", on_cpu(in.x), on_cpu(in.w),
        on_cpu(rstd), Tensor(), false);
    Tensor dx = nan_tensor({c.rows, c.D}, dtype, gpu), dw = nan_tensor({c.D}, dtype, gpu);
    detail::rmsnorm_rows_backward(in.dy, dh, in.x, in.w, rstd, dx, dw);
    EXPECT_TRUE(close_rel(dx, g_ref.dx, tol)) << "dx, dh " << with_dh;
    EXPECT_TRUE(close_rel(dw, g_ref.dweight, tol)) << "dweight, dh " << with_dh;
  }
  // Backward can rebuild y on the way: the very values forward wrote, and the same dx.
  // dweight is summed over partial rows, one per block, and the grid follows each
  // kernel variant's occupancy: with and without y it may differ in the last bits, but
  // a variant run twice gives the same bits.
  for (bool with_dh : {false, true}) {
    const Tensor dh = with_dh ? in.dh : Tensor();
    Tensor dx = nan_tensor({c.rows, c.D}, dtype, gpu), dw = nan_tensor({c.D}, dtype, gpu);
    Tensor y3 = nan_tensor({c.rows, c.D}, dtype, gpu);
    detail::rmsnorm_rows_backward(in.dy, dh, in.x, in.w, rstd, dx, dw, y3);
    EXPECT_EQ(fg::max_abs_diff(y3, y), 0.0) << "y rebuilt by backward, dh " << with_dh;
    Tensor dx0 = nan_tensor({c.rows, c.D}, dtype, gpu), dw0 = nan_tensor({c.D}, dtype, gpu);
    detail::rmsnorm_rows_backward(in.dy, dh, in.x, in.w, rstd, dx0, dw0);
    EXPECT_EQ(fg::max_abs_diff(dx, dx0), 0.0) << "dx, dh " << with_dh;
    EXPECT_TRUE(close_rel(dw, dw0, tol)) << "dweight, dh " << with_dh;
    Tensor dx1 = nan_tensor({c.rows, c.D}, dtype, gpu), dw1 = nan_tensor({c.D}, dtype, gpu);
    Tensor y4 = nan_tensor({c.rows, c.D}, dtype, gpu);
    detail::rmsnorm_rows_backward(in.dy, dh, in.x, in.w, rstd, dx1, dw1, y4);
    EXPECT_EQ(fg::max_abs_diff(dw, dw1), 0.0) << "dweight run twice, dh " << with_dh;
  }

  fg::ops::RMSNormGrads pub_g = rmsnorm_backward(in.dy, in.x, in.w, pub.rstd);
  EXPECT_FALSE(fg::has_non_finite(pub_g.dx));
  EXPECT_FALSE(fg::has_non_finite(pub_g.dweight));
  EXPECT_EQ(pub_g.dweight.dtype(), dtype);

  // dweight into a buffer of the statistics' dtype (a bf16 weight's f32 master gradient),
  // written, then added to: the fp32 sums unrounded (bf16's rounding alone would miss 1e-4).
  const auto f64_cpu = [](const Tensor& t) { return t.to(Device::cpu(), DType::F64); };
  const Tensor dw64 =
      rmsnorm_backward(f64_cpu(in.dy), f64_cpu(in.x), f64_cpu(in.w), f64_cpu(pub.rstd)).dweight;
  Tensor into = nan_tensor({c.D}, stat, gpu);
  fg::ops::RMSNormGrads g_into = rmsnorm_backward(in.dy, in.x, in.w, pub.rstd, into);
  EXPECT_EQ(g_into.dweight.raw_data(), into.raw_data());
  EXPECT_TRUE(close_rel(into, dw64, dtype == DType::F64 ? 1e-12 : 1e-4)) << "dweight into";
  rmsnorm_backward(in.dy, in.x, in.w, pub.rstd, into, true);
  EXPECT_TRUE(close_rel(into, fg::ops::add_forward(dw64, dw64), dtype == DType::F64 ? 1e-12 : 1e-4))
      << "dweight added into";
}

class RMSNormCuda : public ::testing::TestWithParam<NormCase> {};

TEST_P(RMSNormCuda, F32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_rmsnorm_cuda(GetParam(), DType::F32, 1e-5);
}

TEST_P(RMSNormCuda, Bf16MatchesCpu) {
  FG_REQUIRE_GPU();
  check_rmsnorm_cuda(GetParam(), DType::BF16, 1e-2);
}

TEST_P(RMSNormCuda, F64MatchesCpu) {
  FG_REQUIRE_GPU();
  check_rmsnorm_cuda(GetParam(), DType::F64, 1e-12);
}

TEST_P(RMSNormCuda, MisalignedRowsMatchCpu) {
  FG_REQUIRE_GPU();
  check_rmsnorm_cuda(GetParam(), DType::F32, 1e-5, true);
  check_rmsnorm_cuda(GetParam(), DType::BF16, 1e-2, true);
}

// Odd rows and lengths, lengths that allow 16-byte packs (D % 8 == 0), more rows
// than the backward grid has blocks, three elements, and a row longer than 48 KB of
// f32 statistics (the backward kernel's opt-in shared memory). Packed bf16 rows take
// every register-resident shape: a warp per row with 1 to 4 packs per lane (64, 384,
// 520, 1024) and a block per row with 2 and 3 packs per thread (4096, 5120). Not D = 1:
// there y = sign(x) w and dx is pure cancellation, so its relative error means nothing.
INSTANTIATE_TEST_SUITE_P(Shapes, RMSNormCuda,
                         ::testing::Values(NormCase{1, 3}, NormCase{1, 7}, NormCase{37, 1001},
                                           NormCase{1025, 1024}, NormCase{4097, 64},
                                           NormCase{65, 4096}, NormCase{130, 520},
                                           NormCase{3, 13001}, NormCase{2, 8}, NormCase{67, 384},
                                           NormCase{33, 5120}),
                         case_name);

TEST(RMSNormCudaErrors, DevicesMustMatch) {
  FG_REQUIRE_GPU();
  Tensor x = Tensor::zeros({3, 7}, DType::F32, Device::cuda(0));
  EXPECT_FG_ERROR(rmsnorm_forward(x, Tensor::ones({7}), 1e-5),
                  "rmsnorm: weight is on cpu but x is on cuda:0");
}

}  // namespace
