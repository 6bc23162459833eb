// The Hopper GEMM (ops/gemm/gemm_hopper.cuh, through gemm_hopper_bf16) against cuBLASLt's
// fp32 sums of the same bf16 operands, in every schedule, on shapes that are not multiples of
// its tiles, with and without bias, packed and with row strides wider than the rows; plus its
// error messages. Runs on a Hopper GPU with an sm_90a build; skips elsewhere. Test names end
// in the schedule's name (gemm_schedule_name), so --gtest_filter='*_pingpong' runs one.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "ops/gemm/gemm.h"
#include "ops/gemm/gemm_hopper.h"
#include "test_util.h"

#ifdef FG_CUDA  // the kernel exists only in CUDA builds

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Tensor;
using fg::ops::detail::BLayout;
using fg::ops::detail::gemm_hopper_available;
using fg::ops::detail::gemm_hopper_bf16;
using fg::ops::detail::gemm_schedule_name;
using fg::ops::detail::GemmSchedule;

namespace {

#define FG_REQUIRE_HOPPER()                                                               \
  do {                                                                                    \
    FG_REQUIRE_GPU();                                                                     \
    if (!gemm_hopper_available()) GTEST_SKIP() << "not a Hopper GPU, or no sm_90a build"; \
  } while (0)

// bf16 rounding of the output alone gives about 1e-3 (||c - ref|| / ||ref||); a lost k
// step, a wrong tile or a bad swizzle gives 1e-1 or more.
constexpr double kTolerance = 4e-3;
constexpr int64_t kPad = 8;  // extra columns of the wide layouts (keeps 16-byte row strides)

struct Case {
  int64_t m, n, k;
};

std::string case_name(const Case& c) {
  return "m" + std::to_string(c.m) + "_n" + std::to_string(c.n) + "_k" + std::to_string(c.k);
}

// (M, cols) bf16 on the GPU; with `wide`, the first cols columns of an (M, cols + kPad) one.
Tensor operand(int64_t rows, int64_t cols, Generator& gen, bool wide) {
  Tensor t = Tensor::randn({rows, cols + (wide ? kPad : 0)}, gen, DType::BF16, Device::cuda(0));
  return t.slice(1, 0, cols);
}

// cuBLASLt's fp32 result of a @ b^T (+ bias), b (N, K) or, kKN, (K, N): the reference.
Tensor reference(const Tensor& a, const Tensor& b, const Tensor& bias, BLayout b_layout) {
  const bool kn = b_layout == BLayout::kKN;
  Tensor ref = Tensor::empty({a.size(0), b.size(kn ? 1 : 0)}, DType::F32, Device::cuda(0));
  fg::ops::gemm(a, false, b, !kn, ref, 1.0, 0.0, bias.defined() ? bias.to(DType::F32) : Tensor());
  return ref;
}

void check(const Case& g, GemmSchedule schedule, bool with_bias, bool wide,
           BLayout b_layout = BLayout::kNK) {
  SCOPED_TRACE(::testing::Message() << "bias " << with_bias << " wide " << wide);
  Generator gen(1000 + g.m + g.n + g.k);
  Tensor a = operand(g.m, g.k, gen, wide);
  Tensor b = b_layout == BLayout::kKN ? operand(g.k, g.n, gen, wide) : operand(g.n, g.k, gen, wide);
  Tensor bias = with_bias ? Tensor::randn({g.n}, gen, DType::BF16, Device::cuda(0)) : Tensor();
  // c is written into NaN; in the wide layout its padding columns must stay NaN.
  Tensor c_full = Tensor::full({g.m, g.n + (wide ? kPad : 0)}, NAN, DType::BF16, Device::cuda(0));
  Tensor c = c_full.slice(1, 0, g.n);
  gemm_hopper_bf16(a, b, c, bias, schedule, b_layout);
  EXPECT_FALSE(fg::has_non_finite(c)) << "elements left unwritten";
  EXPECT_TRUE(close_rel(c, reference(a, b, bias, b_layout), kTolerance));
  if (wide) {
    const std::vector<double> pad = c_full.slice(1, g.n, g.n + kPad).to_vector();
    for (double v : pad) ASSERT_TRUE(std::isnan(v)) << "a write past column N";
  }
}

class GemmHopper : public ::testing::TestWithParam<std::tuple<Case, GemmSchedule>> {};

TEST_P(GemmHopper, MatchesCublasLt) {
  FG_REQUIRE_HOPPER();
  const auto& [shape, schedule] = GetParam();
  for (bool with_bias : {false, true})
    for (bool wide : {false, true}) check(shape, schedule, with_bias, wide);
}

constexpr Case kShapes[] = {{1, 8, 8},        {127, 248, 72},    {128, 256, 64},
                            {300, 520, 1000}, {1000, 2304, 768}, {2100, 4104, 328},
                            {77, 328, 8},     {4100, 2304, 768}, {520, 1000, 4096}};

// Odd shapes (edges in M, N and K; N a multiple of 8, as the TMA store needs), one exact tile, k
// tiles fewer and more than the ring's stages, and more tiles than SMs with k tiles not a multiple
// of the stages (blocks walk several tiles; the ring's phases wrap mid-tile; ping-pong blocks end
// on either consumer). With 2-CTA clusters, odd row-tile counts leave a block's rows wholly past M,
// and N <= 128 or a last column tile of <= 128 columns leaves its half of B wholly past N.
INSTANTIATE_TEST_SUITE_P(Shapes, GemmHopper,
                         ::testing::Combine(::testing::ValuesIn(kShapes),
                                            ::testing::ValuesIn(fg::ops::detail::kGemmSchedules)),
                         [](const auto& info) {
                           return case_name(std::get<0>(info.param)) + "_" +
                                  gemm_schedule_name(std::get<1>(info.param));
                         });

// b given as (K, N), read N-major: the same shapes (a last column tile whose 64-column chunks
// lie partly or wholly past N, as at N = 8, 248 and 520), in the one-block schedules.
class GemmHopperKN : public ::testing::TestWithParam<std::tuple<Case, GemmSchedule>> {};

TEST_P(GemmHopperKN, MatchesCublasLt) {
  FG_REQUIRE_HOPPER();
  const auto& [shape, schedule] = GetParam();
  for (bool with_bias : {false, true})
    for (bool wide : {false, true}) check(shape, schedule, with_bias, wide, BLayout::kKN);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmHopperKN,
                         ::testing::Combine(::testing::ValuesIn(kShapes),
                                            ::testing::Values(GemmSchedule::kCooperative,
                                                              GemmSchedule::kPingPong)),
                         [](const auto& info) {
                           return case_name(std::get<0>(info.param)) + "_" +
                                  gemm_schedule_name(std::get<1>(info.param));
                         });

// The comparison above can fail: one row of a correct result, perturbed, does not pass.
TEST(GemmHopperEdge, PerturbedResultFailsTheCheck) {
  FG_REQUIRE_HOPPER();
  Generator gen(7);
  Tensor a = operand(127, 72, gen, false), b = operand(248, 72, gen, false);
  Tensor c = Tensor::empty({127, 248}, DType::BF16, Device::cuda(0));
  gemm_hopper_bf16(a, b, c);
  const Tensor ref = reference(a, b, Tensor(), BLayout::kNK);
  ASSERT_TRUE(close_rel(c, ref, kTolerance));
  c.slice(0, 5, 6).fill_(1.0);
  EXPECT_FALSE(close_rel(c, ref, kTolerance));
}

TEST(GemmHopperEdge, ErrorsNameTheProblem) {
  FG_REQUIRE_HOPPER();
  Generator gen(3);
  const Device gpu = Device::cuda(0);
  Tensor a = Tensor::randn({4, 12}, gen, DType::BF16, gpu),
         b = Tensor::randn({8, 12}, gen, DType::BF16, gpu);
  Tensor c = Tensor::empty({4, 8}, DType::BF16, gpu);
  EXPECT_FG_ERROR(gemm_hopper_bf16(a, b, c), "K = 12 must be a multiple of 8");
  Tensor wide = Tensor::randn({4, 24}, gen, DType::BF16, gpu);
  // a starts 8 bytes into its rows' storage
  EXPECT_FG_ERROR(gemm_hopper_bf16(wide.slice(1, 4, 20), wide.slice(1, 0, 16), c.slice(1, 0, 4)),
                  "a and b must start 16-byte aligned");
  // c's rows 5 elements apart: not TMA boxes
  EXPECT_FG_ERROR(
      gemm_hopper_bf16(wide.slice(1, 0, 16), Tensor::randn({5, 16}, gen, DType::BF16, gpu),
                       Tensor::empty({4, 5}, DType::BF16, gpu)),
      "multiple of 8 elements (TMA stores it)");
  EXPECT_FG_ERROR(gemm_hopper_bf16(wide.slice(1, 0, 16), wide.slice(1, 0, 8), c),
                  "a is (4, 16) but b is (4, 8)");
  EXPECT_FG_ERROR(gemm_hopper_bf16(wide, Tensor::zeros({8, 24}, DType::F32, gpu), c),
                  "b is f32 but expected bf16");
  EXPECT_FG_ERROR(gemm_hopper_bf16(wide.slice(1, 0, 16), wide.slice(1, 0, 8), c, Tensor(),
                                   GemmSchedule::kCooperative, BLayout::kKN),
                  "a is (4, 16) but b is (4, 8) (expected (16, N))");
  EXPECT_FG_ERROR(gemm_hopper_bf16(wide.slice(1, 0, 16), Tensor::zeros({16, 8}, DType::BF16, gpu),
                                   c, Tensor(), GemmSchedule::kPingPong2Cta, BLayout::kKN),
                  "runs in the cooperative and pingpong schedules, not pingpong_2cta");
}

}  // namespace

#endif  // FG_CUDA
