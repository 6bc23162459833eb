// rope: hand-computed rotations, identity at position 0, pair norms, inverse,
// offsets as a KV cache sees them, relative-position dot products, per-batch
// positions, error messages; CUDA against the CPU in f32, bf16 and f64 into
// NaN-poisoned buffers, including positions in the thousands.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ops/rope/rope.h"
#include "test_util.h"

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;
using fg::ops::rope_backward;
using fg::ops::rope_forward;
namespace detail = fg::ops::detail;

namespace {

// offset + t for each of T positions, shared by the batch.
Tensor arange_positions(int64_t T, int32_t offset, Device device = Device::cpu()) {
  std::vector<int32_t> p(T);
  for (int64_t t = 0; t < T; ++t) p[t] = offset + static_cast<int32_t>(t);
  return Tensor::from_ints(p, {T}, device);
}

TEST(Rope, HandComputed) {
  // hd 4, full rotary, theta 100, position 1: pair 0 turns by 1 rad, pair 1 by 0.1 rad.
  Tensor x = Tensor::from_vector({1, 2, 3, 4}, {1, 1, 1, 4}, DType::F64);
  std::vector<double> y = rope_forward(x, Tensor::from_ints({1}, {1}), 4, 100.0).to_vector();
  const double c1 = std::cos(1.0), s1 = std::sin(1.0), c2 = std::cos(0.1), s2 = std::sin(0.1);
  std::vector<double> expected = {1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1,
                                  4 * c2 + 2 * s2};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i], expected[i], 1e-15) << i;
}

TEST(Rope, PositionZeroIsIdentity) {
  Generator gen(1);
  Tensor x = Tensor::randn({2, 3, 5, 10}, gen);
  Tensor zeros = Tensor::from_ints({0, 0, 0}, {3});
  EXPECT_EQ(fg::max_abs_diff(rope_forward(x, zeros, 6, 1e4), x), 0.0);
  EXPECT_EQ(fg::max_abs_diff(rope_forward(x, zeros, 10, 1e4), x), 0.0);
}

TEST(Rope, PartialRotaryPassesTheRestThrough) {
  Generator gen(2);
  Tensor x = Tensor::randn({2, 5, 3, 10}, gen, DType::F64);
  Tensor y = rope_forward(x, arange_positions(5, 7), 6, 1e4);
  EXPECT_EQ(fg::max_abs_diff(y.slice(3, 6, 10), x.slice(3, 6, 10)), 0.0);
  EXPECT_GT(fg::max_abs_diff(y.slice(3, 0, 6), x.slice(3, 0, 6)), 1e-2);
}

TEST(Rope, PreservesPairNorms) {
  Generator gen(3);
  const int64_t hd = 14, r = 10;
  Tensor x = Tensor::randn({3, 4, 2, hd}, gen, DType::F64);
  std::vector<double> xv = x.to_vector(),
                      yv = rope_forward(x, arange_positions(4, 3), r, 500.0).to_vector();
  for (size_t head = 0; head < xv.size() / hd; ++head) {
    for (int64_t i = 0; i < r / 2; ++i) {
      const double* a = &xv[head * hd];
      const double* b = &yv[head * hd];
      EXPECT_NEAR(a[i] * a[i] + a[i + r / 2] * a[i + r / 2],
                  b[i] * b[i] + b[i + r / 2] * b[i + r / 2], 1e-13);
    }
  }
}

TEST(Rope, BackwardInvertsForward) {
  Generator gen(4);
  Tensor x = Tensor::randn({2, 7, 3, 18}, gen, DType::F64);
  Tensor pos = arange_positions(7, 1000);
  EXPECT_LE(fg::max_abs_diff(rope_backward(rope_forward(x, pos, 12, 1e4), pos, 12, 1e4), x), 1e-14);
  EXPECT_LE(fg::max_abs_diff(rope_forward(rope_backward(x, pos, 18, 1e4), pos, 18, 1e4), x), 1e-14);
}

TEST(Rope, OffsetPositionsMatchTheTailOfALongerSequence) {
  // Generation with a KV cache: tokens 7..11 rotated with positions 7 + t equal the
  // same tokens rotated as the tail of a 12-token sequence.
  Generator gen(5);
  Tensor full = Tensor::randn({2, 12, 3, 10}, gen, DType::F64);
  Tensor tail = full.slice(1, 7, 12);
  Tensor y_full = rope_forward(full, arange_positions(12, 0), 8, 1e4);
  Tensor y_tail = rope_forward(tail, arange_positions(5, 7), 8, 1e4);
  EXPECT_EQ(fg::max_abs_diff(y_tail, y_full.slice(1, 7, 12)), 0.0);
}

TEST(Rope, DotProductsDependOnRelativePosition) {
  Generator gen(6);
  Tensor q = Tensor::randn({1, 1, 1, 16}, gen, DType::F64);
  Tensor k = Tensor::randn({1, 1, 1, 16}, gen, DType::F64);
  auto score = [&](int32_t m, int32_t n) {
    std::vector<double> a = rope_forward(q, Tensor::from_ints({m}, {1}), 16, 1e4).to_vector();
    std::vector<double> b = rope_forward(k, Tensor::from_ints({n}, {1}), 16, 1e4).to_vector();
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
  };
  EXPECT_NEAR(score(9, 4), score(105, 100), 1e-12);
  EXPECT_NEAR(score(3, 3), score(0, 0), 1e-12);
  EXPECT_GT(std::fabs(score(9, 4) - score(4, 9)), 1e-6);  // not symmetric in m - n
}

TEST(Rope, PerBatchPositions) {
  Generator gen(7);
  Tensor x = Tensor::randn({2, 4, 3, 6}, gen, DType::F64);
  // Rows equal to the shared positions give the shared result.
  Tensor same = Tensor::from_ints({5, 6, 7, 8, 5, 6, 7, 8}, {2, 4});
  EXPECT_EQ(fg::max_abs_diff(rope_forward(x, same, 6, 1e4),
                             rope_forward(x, arange_positions(4, 5), 6, 1e4)),
            0.0);
  // Distinct rows act on their own batch element.
  Tensor rows = Tensor::from_ints({0, 1, 2, 3, 40, 41, 42, 43}, {2, 4});
  Tensor y = rope_forward(x, rows, 6, 1e4);
  EXPECT_EQ(fg::max_abs_diff(y.slice(0, 0, 1),
                             rope_forward(x.slice(0, 0, 1), arange_positions(4, 0), 6, 1e4)),
            0.0);
  EXPECT_EQ(fg::max_abs_diff(y.slice(0, 1, 2),
                             rope_forward(x.slice(0, 1, 2), arange_positions(4, 40), 6, 1e4)),
            0.0);
}

TEST(Rope, F32AnglesMatchF64ForSmallPositions) {
  Generator gen(8);
  Tensor x = Tensor::randn({2, 9, 3, 32}, gen, DType::F64);
  Tensor pos = arange_positions(9, 3);
  EXPECT_TRUE(
      close_rel(rope_forward(x.to(DType::F32), pos, 32, 1e4), rope_forward(x, pos, 32, 1e4), 1e-6));
}

TEST(Rope, ErrorsNameBothSides) {
  Tensor x = Tensor::zeros({2, 5, 3, 10});
  Tensor pos = arange_positions(5, 0);
  EXPECT_FG_ERROR(rope_forward(x, arange_positions(6, 0), 6, 1e4),
                  "rope: positions is (6,) but expected (5,) or (2, 5)");
  EXPECT_FG_ERROR(rope_forward(x, Tensor::zeros({5}), 6, 1e4),
                  "rope: positions is f32 but expected i32");
  EXPECT_FG_ERROR(rope_forward(x, pos, 5, 1e4),
                  "rope: rotary_dim is 5 but must be even, positive and <= head_dim 10");
  EXPECT_FG_ERROR(rope_forward(x, pos, 12, 1e4), "rotary_dim is 12");
  EXPECT_FG_ERROR(rope_forward(x, pos, 0, 1e4), "rotary_dim is 0");
  EXPECT_FG_ERROR(rope_forward(Tensor::zeros({2, 5, 30}), pos, 6, 1e4),
                  "rope: x is (2, 5, 30) but expected (B, T, heads, head_dim)");
  EXPECT_FG_ERROR(rope_forward(x, pos, 6, 0.0), "rope: theta is 0");
  EXPECT_FG_ERROR(rope_backward(x, Tensor::from_ints({0, 1, 2, 3, 4}, {1, 5}), 6, 1e4),
                  "rope_backward: positions is (1, 5) but expected (5,) or (2, 5)");
  EXPECT_FG_ERROR(fg::ops::check_rope_args("attention", x, Tensor(), 6),
                  "attention: positions is undefined");
}

// ---------------------------------------------------------------------------
// CUDA against the CPU. The CPU computes f32 angles exactly as the GPU does (same
// inverse frequencies, f32 multiply), so f32 agrees to rounding even at large positions.

struct RopeCase {
  int64_t B, T, nh, hd, rotary;
  int32_t offset;
  bool per_batch;
};

std::string case_name(const ::testing::TestParamInfo<RopeCase>& info) {
  const RopeCase& c = info.param;
  return "B" + std::to_string(c.B) + "_T" + std::to_string(c.T) + "_nh" + std::to_string(c.nh) +
         "_hd" + std::to_string(c.hd) + "_r" + std::to_string(c.rotary) + "_pos" +
         std::to_string(c.offset) + (c.per_batch ? "_perbatch" : "");
}

Tensor make_positions(const RopeCase& c, Device device) {
  if (!c.per_batch) return arange_positions(c.T, c.offset, device);
  std::vector<int32_t> p;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t t = 0; t < c.T; ++t) p.push_back(c.offset + static_cast<int32_t>(17 * b + t));
  return Tensor::from_ints(p, {c.B, c.T}, device);
}

Tensor on_cpu(const Tensor& t) {
  return t.to(Device::cpu(), t.dtype() == DType::F64 ? DType::F64 : DType::F32);
}

void check_rope_cuda(const RopeCase& c, DType dtype, double tol) {
  const Device gpu = Device::cuda(0);
  const double theta = 1e4;
  Generator gen(31 + c.hd);
  Shape shape = {c.B, c.T, c.nh, c.hd};
  Tensor x = Tensor::randn(shape, gen, dtype, gpu);
  Tensor pos = make_positions(c, gpu), pos_cpu = pos.to(Device::cpu());
  for (bool inverse : {false, true}) {
    Tensor ref = inverse ? rope_backward(on_cpu(x), pos_cpu, c.rotary, theta)
                         : rope_forward(on_cpu(x), pos_cpu, c.rotary, theta);
    Tensor out = Tensor::full(shape, NAN, dtype, gpu);
    detail::rope_segments({{x, out, true}}, pos, c.rotary, theta, inverse);
    EXPECT_TRUE(close_rel(out, ref, tol)) << (inverse ? "backward" : "forward");
    Tensor pub =
        inverse ? rope_backward(x, pos, c.rotary, theta) : rope_forward(x, pos, c.rotary, theta);
    EXPECT_TRUE(pub.is_cuda());
    EXPECT_EQ(pub.dtype(), dtype);
    EXPECT_EQ(fg::max_abs_diff(pub, out), 0.0);
  }
  // A copy segment moves the values unchanged, dims past rotary_dim included.
  Tensor copy = Tensor::full(shape, NAN, dtype, gpu);
  detail::rope_segments({{x, copy, false}}, pos, c.rotary, theta, false);
  EXPECT_EQ(fg::max_abs_diff(copy, x), 0.0);
}

class RopeCuda : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeCuda, F32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_rope_cuda(GetParam(), DType::F32, 1e-5);
}

TEST_P(RopeCuda, Bf16MatchesCpu) {
  FG_REQUIRE_GPU();
  check_rope_cuda(GetParam(), DType::BF16, 1e-2);
}

TEST_P(RopeCuda, F64MatchesCpu) {
  FG_REQUIRE_GPU();
  check_rope_cuda(GetParam(), DType::F64, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeCuda,
    ::testing::Values(RopeCase{2, 37, 3, 10, 6, 7, false}, RopeCase{3, 5, 2, 64, 64, 0, true},
                      RopeCase{1, 129, 5, 18, 18, 4000, false}, RopeCase{2, 1, 1, 2, 2, 0, false},
                      RopeCase{4, 33, 7, 128, 32, 100, true}, RopeCase{1, 1031, 1, 6, 4, 0, false}),
    case_name);

TEST(RopeCudaSegments, SplitsAndPacksQkvRows) {
  // q, k rotated and v copied out of one (B, T, 3 heads) buffer, then packed back
  // with the inverse rotation: the round trip restores the buffer.
  FG_REQUIRE_GPU();
  const Device gpu = Device::cuda(0);
  Generator gen(41);
  Tensor qkv = Tensor::randn({2, 9, 2 + 1 + 1, 10}, gen, DType::F32, gpu);  // H 2, Hkv 1
  Tensor pos = arange_positions(9, 5, gpu);
  Tensor q = Tensor::full({2, 9, 2, 10}, NAN, DType::F32, gpu);
  Tensor k = Tensor::full({2, 9, 1, 10}, NAN, DType::F32, gpu);
  Tensor v = Tensor::full({2, 9, 1, 10}, NAN, DType::F32, gpu);
  detail::rope_segments({{qkv.slice(2, 0, 2), q, true},
                         {qkv.slice(2, 2, 3), k, true},
                         {qkv.slice(2, 3, 4), v, false}},
                        pos, 6, 1e4, false);
  Tensor pos_cpu = pos.to(Device::cpu());
  Tensor qkv_cpu = qkv.to(Device::cpu());
  EXPECT_TRUE(close_rel(q, rope_forward(qkv_cpu.slice(2, 0, 2), pos_cpu, 6, 1e4), 1e-6));
  EXPECT_TRUE(close_rel(k, rope_forward(qkv_cpu.slice(2, 2, 3), pos_cpu, 6, 1e4), 1e-6));
  EXPECT_EQ(fg::max_abs_diff(v, qkv_cpu.slice(2, 3, 4)), 0.0);
  Tensor packed = Tensor::full(qkv.shape(), NAN, DType::F32, gpu);
  detail::rope_segments({{q, packed.slice(2, 0, 2), true},
                         {k, packed.slice(2, 2, 3), true},
                         {v, packed.slice(2, 3, 4), false}},
                        pos, 6, 1e4, true);
  EXPECT_TRUE(close_rel(packed, qkv, 1e-6));
}

// The fused layer's backward pack: inverse rotation of q and k heads, v copied, and
// the column sums of the result, over enough rows for many blocks, row chunks and
// lanes; 16-byte layouts (hd 64/128, rotary a multiple of 16, pass-through dims
// included) and the element-wise fallback (hd 10).
struct PackCase {
  int64_t B, T, H, Hkv, hd, rotary;
  bool per_batch;
};

void check_pack_cuda(const PackCase& c, DType dtype, double tol) {
  const Device gpu = Device::cuda(0);
  const double theta = 1e4;
  const int64_t heads = c.H + 2 * c.Hkv, columns = heads * c.hd;
  Generator gen(51 + c.hd + c.T);
  Tensor dq = Tensor::randn({c.B, c.T, c.H, c.hd}, gen, dtype, gpu);
  Tensor dk = Tensor::randn({c.B, c.T, c.Hkv, c.hd}, gen, dtype, gpu);
  Tensor dv = Tensor::randn({c.B, c.T, c.Hkv, c.hd}, gen, dtype, gpu);
  RopeCase rc{c.B, c.T, 1, c.hd, c.rotary, 3000, c.per_batch};
  Tensor pos = make_positions(rc, gpu), pos_cpu = pos.to(Device::cpu());

  auto pack = [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& packed,
                  const Tensor& p, const detail::RopeExtras& extras) {
    detail::rope_segments({{q, packed.slice(2, 0, c.H), true},
                           {k, packed.slice(2, c.H, c.H + c.Hkv), true},
                           {v, packed.slice(2, c.H + c.Hkv, heads), false}},
                          p, c.rotary, theta, true, extras);
  };
  Tensor ref = Tensor::empty({c.B, c.T, heads, c.hd}, on_cpu(dq).dtype());
  Tensor ref_sums = Tensor::empty({columns}, on_cpu(dq).dtype());
  pack(on_cpu(dq), on_cpu(dk), on_cpu(dv), ref, pos_cpu, {ref_sums});
  Tensor out = Tensor::full({c.B, c.T, heads, c.hd}, NAN, dtype, gpu);
  Tensor sums = Tensor::full({columns}, NAN, dtype, gpu);
  pack(dq, dk, dv, out, pos, {sums});
  EXPECT_TRUE(close_rel(out, ref, tol)) << "packed rows";
  EXPECT_TRUE(close_rel(sums, ref_sums, tol)) << "column sums";

  EXPECT_EQ(fg::max_abs_diff(out.slice(2, c.H + c.Hkv, heads), dv), 0.0) << "v copied exactly";
  // Without extras the same pass writes the same rows.
  Tensor plain = Tensor::full({c.B, c.T, heads, c.hd}, NAN, dtype, gpu);
  pack(dq, dk, dv, plain, pos, {});
  EXPECT_EQ(fg::max_abs_diff(plain, out), 0.0) << "without extras";
}

class RopePackCuda : public ::testing::TestWithParam<PackCase> {};

TEST_P(RopePackCuda, F32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_pack_cuda(GetParam(), DType::F32, 1e-5);
}

TEST_P(RopePackCuda, Bf16MatchesCpu) {
  FG_REQUIRE_GPU();
  check_pack_cuda(GetParam(), DType::BF16, 1e-2);
}

TEST_P(RopePackCuda, F64MatchesCpu) {
  FG_REQUIRE_GPU();
  check_pack_cuda(GetParam(), DType::F64, 1e-12);
}

std::string pack_name(const ::testing::TestParamInfo<PackCase>& info) {
  const PackCase& c = info.param;
  return "B" + std::to_string(c.B) + "_T" + std::to_string(c.T) + "_H" + std::to_string(c.H) +
         "_Hkv" + std::to_string(c.Hkv) + "_hd" + std::to_string(c.hd) + "_r" +
         std::to_string(c.rotary) + (c.per_batch ? "_perbatch" : "");
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopePackCuda,
                         ::testing::Values(PackCase{3, 101, 4, 2, 64, 64, false},
                                           PackCase{2, 1500, 2, 1, 128, 96, true},
                                           PackCase{1, 7, 3, 1, 10, 6, false},
                                           PackCase{2, 333, 8, 8, 128, 128, false},
                                           PackCase{1, 1, 1, 1, 64, 32, true}),
                         pack_name);

TEST(RopeExtras, CpuColumnSums) {
  // Two tokens, one rotated head and one copied head of 4 dims: by hand.
  Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6, 7, 8}, {1, 2, 1, 4}, DType::F64);
  Tensor v = Tensor::from_vector({1, 1, 1, 1, 2, 2, 2, 2}, {1, 2, 1, 4}, DType::F64);
  Tensor pos = Tensor::from_ints({0, 0}, {2});  // angle 0: the rotation is the identity
  Tensor out = Tensor::empty({1, 2, 2, 4}, DType::F64), sums = Tensor::empty({8}, DType::F64);
  detail::rope_segments({{x, out.slice(2, 0, 1), true}, {v, out.slice(2, 1, 2), false}}, pos, 4,
                        1e4, false, {sums});
  EXPECT_EQ(out.to_vector(), (std::vector<double>{1, 2, 3, 4, 1, 1, 1, 1, 5, 6, 7, 8, 2, 2, 2, 2}));
  EXPECT_EQ(sums.to_vector(), (std::vector<double>{6, 8, 10, 12, 3, 3, 3, 3}));
  EXPECT_FG_ERROR(detail::rope_segments({{x, out.slice(2, 0, 1), true}}, pos, 4, 1e4, false,
                                        {Tensor::empty({3}, DType::F64)}),
                  "rope: column_sums is (3,) f64 cpu but expected (4,) f64 on cpu");
}

}  // namespace
