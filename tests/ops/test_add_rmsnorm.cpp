// add_rmsnorm: equals add then rmsnorm, backward adds dh, error messages; the CUDA
// residual path against the CPU in f32, bf16 and f64 into NaN-poisoned buffers.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ops/add/add.h"
#include "ops/add_rmsnorm/add_rmsnorm.h"
#include "ops/rmsnorm/rmsnorm.h"
#include "test_util.h"

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;
using fg::ops::add_rmsnorm_backward;
using fg::ops::add_rmsnorm_forward;
namespace detail = fg::ops::detail;

namespace {

TEST(AddRMSNorm, ForwardEqualsAddThenRMSNorm) {
  Generator gen(1);
  Tensor x = Tensor::randn({3, 5, 7}, gen, DType::F64);
  Tensor res = Tensor::randn({3, 5, 7}, gen, DType::F64);
  Tensor w = Tensor::randn({7}, gen, DType::F64);
  fg::ops::AddRMSNormOut out = add_rmsnorm_forward(x, res, w, 1e-5);
  Tensor h = fg::ops::add_forward(x, res);
  fg::ops::RMSNormOut ref = fg::ops::rmsnorm_forward(h, w, 1e-5);
  EXPECT_EQ(fg::max_abs_diff(out.h, h), 0.0);
  EXPECT_EQ(fg::max_abs_diff(out.y, ref.y), 0.0);
  EXPECT_EQ(fg::max_abs_diff(out.rstd, ref.rstd), 0.0);
}

TEST(AddRMSNorm, HandComputed) {
  // h = [3, -4] (mean(h^2) 12.5) and [0, 0]; eps 0.25.
  Tensor x = Tensor::from_vector({1, -1, 2, 0}, {2, 2}, DType::F64);
  Tensor r = Tensor::from_vector({2, -3, -2, 0}, {2, 2}, DType::F64);
  Tensor w = Tensor::from_vector({2, 1}, {2}, DType::F64);
  fg::ops::AddRMSNormOut out = add_rmsnorm_forward(x, r, w, 0.25);
  EXPECT_EQ(out.h.to_vector(), (std::vector<double>{3, -4, 0, 0}));
  const double r0 = 1 / std::sqrt(12.75);
  std::vector<double> y = out.y.to_vector();
  EXPECT_NEAR(y[0], 6 * r0, 1e-15);
  EXPECT_NEAR(y[1], -4 * r0, 1e-15);
  EXPECT_EQ(y[2], 0.0);
  EXPECT_EQ(out.rstd.to_vector()[1], 2.0);  // 1 / sqrt(0 + 0.25)
}

TEST(AddRMSNorm, BackwardIsRMSNormBackwardPlusDh) {
  Generator gen(2);
  Tensor x = Tensor::randn({4, 9}, gen, DType::F64), res = Tensor::randn({4, 9}, gen, DType::F64);
  Tensor w = Tensor::randn({9}, gen, DType::F64);
  Tensor dy = Tensor::randn({4, 9}, gen, DType::F64), dh = Tensor::randn({4, 9}, gen, DType::F64);
  fg::ops::AddRMSNormOut out = add_rmsnorm_forward(x, res, w, 1e-5);
  fg::ops::RMSNormGrads norm = fg::ops::rmsnorm_backward(dy, out.h, w, out.rstd);
  fg::ops::AddRMSNormGrads without = add_rmsnorm_backward(dy, Tensor(), out.h, w, out.rstd);
  fg::ops::AddRMSNormGrads with = add_rmsnorm_backward(dy, dh, out.h, w, out.rstd);
  EXPECT_EQ(fg::max_abs_diff(without.dx, norm.dx), 0.0);
  EXPECT_EQ(fg::max_abs_diff(without.dweight, norm.dweight), 0.0);
  EXPECT_LE(fg::max_abs_diff(with.dx, fg::ops::add_forward(norm.dx, dh)), 1e-15);
  EXPECT_EQ(fg::max_abs_diff(with.dweight, norm.dweight), 0.0);
}

// Without a residual: the norm of x, and h is x's own tensor (nothing copied).
TEST(AddRMSNorm, WithoutResidualHIsXItself) {
  Generator gen(3);
  Tensor x = Tensor::randn({3, 5, 7}, gen, DType::F64), w = Tensor::randn({7}, gen, DType::F64);
  fg::ops::AddRMSNormOut out = add_rmsnorm_forward(x, Tensor(), w, 1e-5);
  fg::ops::RMSNormOut ref = fg::ops::rmsnorm_forward(x, w, 1e-5);
  EXPECT_EQ(out.h.raw_data(), x.raw_data());
  EXPECT_EQ(fg::max_abs_diff(out.y, ref.y), 0.0);
  EXPECT_EQ(fg::max_abs_diff(out.rstd, ref.rstd), 0.0);
}

TEST(AddRMSNorm, ErrorsNameBothSides) {
  Tensor x = Tensor::zeros({3, 5, 7}), w = Tensor::ones({7});
  EXPECT_FG_ERROR(add_rmsnorm_forward(x, Tensor::zeros({3, 5, 6}), w, 1e-5),
                  "add_rmsnorm: residual is (3, 5, 6) but x is (3, 5, 7)");
  EXPECT_FG_ERROR(add_rmsnorm_forward(x, Tensor::zeros({3, 5, 7}, DType::F64), w, 1e-5),
                  "add_rmsnorm: residual is f64 but x is f32");
  EXPECT_FG_ERROR(add_rmsnorm_forward(x, x, Tensor::ones({8}), 1e-5),
                  "add_rmsnorm: weight is (8,) but expected (7,)");
  Tensor rstd = Tensor::ones({15});
  EXPECT_FG_ERROR(add_rmsnorm_backward(x, Tensor::zeros({15, 7}), x, w, rstd),
                  "add_rmsnorm_backward: dh is (15, 7) but h is (3, 5, 7)");
  EXPECT_FG_ERROR(add_rmsnorm_backward(Tensor::zeros({7}), Tensor(), x, w, rstd),
                  "add_rmsnorm_backward: dy is (7,) but h is (3, 5, 7)");
}

// ---------------------------------------------------------------------------
// CUDA against the CPU, through the residual path of the row kernels.

struct NormCase {
  int64_t rows, D;
};

Tensor on_cpu(const Tensor& t) {
  return t.to(Device::cpu(), t.dtype() == DType::F64 ? DType::F64 : DType::F32);
}

void check_add_rmsnorm_cuda(const NormCase& c, DType dtype, double tol) {
  const Device gpu = Device::cuda(0);
  const DType stat = detail::rmsnorm_stat_dtype(dtype);
  Generator gen(21 + c.rows * 3 + c.D);
  Tensor x = Tensor::randn({c.rows, c.D}, gen, dtype, gpu);
  Tensor res = Tensor::randn({c.rows, c.D}, gen, dtype, gpu, 0.0, 2.0);
  Tensor w = Tensor::uniform({c.D}, gen, 0.5, 1.5, dtype, gpu);
  Tensor dy = Tensor::randn({c.rows, c.D}, gen, dtype, gpu);
  Tensor dh = Tensor::randn({c.rows, c.D}, gen, dtype, gpu);

  fg::ops::AddRMSNormOut ref = add_rmsnorm_forward(on_cpu(x), on_cpu(res), on_cpu(w), 1e-5);
  Tensor y = Tensor::full({c.rows, c.D}, NAN, dtype, gpu);
  Tensor h = Tensor::full({c.rows, c.D}, NAN, dtype, gpu);
  Tensor rstd = Tensor::full({c.rows}, NAN, stat, gpu);
  detail::rmsnorm_rows_forward(x, res, w, 1e-5, h, y, rstd);
  EXPECT_TRUE(close_rel(h, ref.h, tol)) << "h";
  EXPECT_TRUE(close_rel(y, ref.y, tol)) << "y";
  EXPECT_TRUE(close_rel(rstd, ref.rstd, tol)) << "rstd";

  fg::ops::AddRMSNormOut pub = add_rmsnorm_forward(x, res, w, 1e-5);
  EXPECT_EQ(fg::max_abs_diff(pub.y, y), 0.0);
  EXPECT_EQ(fg::max_abs_diff(pub.h, h), 0.0);
  fg::ops::AddRMSNormOut alone = add_rmsnorm_forward(h, Tensor(), w, 1e-5);  // no residual
  EXPECT_EQ(alone.h.raw_data(), h.raw_data());
  EXPECT_TRUE(close_rel(alone.y, ref.y, tol)) << "y without a residual";

  for (bool with_dh : {false, true}) {
    fg::ops::AddRMSNormGrads g_ref = add_rmsnorm_backward(
        on_cpu(dy), with_dh ? on_cpu(dh) : Tensor(), on_cpu(h), on_cpu(w), on_cpu(rstd));
    fg::ops::AddRMSNormGrads g = add_rmsnorm_backward(dy, with_dh ? dh : Tensor(), h, w, rstd);
    EXPECT_TRUE(g.dx.is_cuda());
    EXPECT_FALSE(fg::has_non_finite(g.dx));
    EXPECT_FALSE(fg::has_non_finite(g.dweight));
    EXPECT_TRUE(close_rel(g.dx, g_ref.dx, tol)) << "dx, dh " << with_dh;
    EXPECT_TRUE(close_rel(g.dweight, g_ref.dweight, tol)) << "dweight, dh " << with_dh;
  }
}

class AddRMSNormCuda : public ::testing::TestWithParam<NormCase> {};

TEST_P(AddRMSNormCuda, F32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_add_rmsnorm_cuda(GetParam(), DType::F32, 1e-5);
}

TEST_P(AddRMSNormCuda, Bf16MatchesCpu) {
  FG_REQUIRE_GPU();
  check_add_rmsnorm_cuda(GetParam(), DType::BF16, 1e-2);
}

TEST_P(AddRMSNormCuda, F64MatchesCpu) {
  FG_REQUIRE_GPU();
  check_add_rmsnorm_cuda(GetParam(), DType::F64, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AddRMSNormCuda,
                         ::testing::Values(NormCase{1, 3}, NormCase{37, 1001}, NormCase{1025, 768},
                                           NormCase{4097, 72}, NormCase{5, 8200}),
                         [](const ::testing::TestParamInfo<NormCase>& info) {
                           return "rows" + std::to_string(info.param.rows) + "_D" +
                                  std::to_string(info.param.D);
                         });

}  // namespace
