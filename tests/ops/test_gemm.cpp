// gemm: the CPU reference on hand-computed products and its error messages;
// cuBLASLt against the CPU in f64 / f32 / bf16 over transposes, odd shapes,
// alpha/beta, the bias epilogue and leading dimensions wider than the matrix.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "ops/gemm/gemm.h"
#include "test_util.h"

using fg::test::f64;
using fg::test::poison_pool;

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;

namespace {

TEST(Gemm, HandComputedProducts) {
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::F64);     // (2, 3)
  Tensor b = Tensor::from_vector({1, 0, -1, 2, 0.5, 1}, {3, 2}, DType::F64);  // (3, 2)
  // a @ b = [[1*1 + 2*-1 + 3*0.5, 0 + 4 + 3], [4 - 5 + 3, 0 + 10 + 6]]
  std::vector<double> ab = {0.5, 7, 2, 16};
  EXPECT_EQ(fg::ops::matmul(a, false, b, false).to_vector(), ab);
  Tensor at = a.transpose(0, 1).contiguous(), bt = b.transpose(0, 1).contiguous();
  EXPECT_EQ(fg::ops::matmul(at, true, b, false).to_vector(), ab);
  EXPECT_EQ(fg::ops::matmul(a, false, bt, true).to_vector(), ab);
  EXPECT_EQ(fg::ops::matmul(at, true, bt, true).to_vector(), ab);

  // c = 2 (a @ b) + 0.5 c + bias
  Tensor c = Tensor::from_vector({2, 4, 6, 8}, {2, 2}, DType::F64);
  Tensor bias = Tensor::from_vector({10, 20}, {2}, DType::F64);
  fg::ops::gemm(a, false, b, false, c, 2.0, 0.5, bias);
  EXPECT_EQ(c.to_vector(), (std::vector<double>{1 + 1 + 10, 14 + 2 + 20, 4 + 3 + 10, 32 + 4 + 20}));
}

// An addend takes c's place under beta; c is only written, the addend only read.
TEST(Gemm, AddendTakesThePlaceOfC) {
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::F64);
  Tensor b = Tensor::from_vector({1, 0, -1, 2, 0.5, 1}, {3, 2}, DType::F64);
  Tensor addend = Tensor::from_vector({2, 4, 6, 8}, {2, 2}, DType::F64);
  Tensor bias = Tensor::from_vector({10, 20}, {2}, DType::F64);
  Tensor c = Tensor::full({2, 2}, NAN, DType::F64);
  fg::ops::gemm(a, false, b, false, c, 2.0, 0.5, bias, addend);
  EXPECT_EQ(c.to_vector(), (std::vector<double>{1 + 1 + 10, 14 + 2 + 20, 4 + 3 + 10, 32 + 4 + 20}));
  EXPECT_EQ(addend.to_vector(), (std::vector<double>{2, 4, 6, 8}));
  EXPECT_FG_ERROR(fg::ops::gemm(a, false, b, false, c, 1, 1, Tensor(), Tensor::zeros({2, 3})),
                  "addend is (2, 3) but expected (2, 2)");
  EXPECT_FG_ERROR(
      fg::ops::gemm(a, false, b, false, c, 1, 1, Tensor(), Tensor::zeros({2, 2}, DType::F32)),
      "addend");
}

TEST(Gemm, ErrorsNameTheShapes) {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4, 2}), c = Tensor::zeros({2, 2});
  EXPECT_FG_ERROR(fg::ops::gemm(a, false, b, false, c), "op(a) is (2, 3) but op(b) is (4, 2)");
  EXPECT_FG_ERROR(fg::ops::gemm(a, false, Tensor::zeros({3, 5}), false, c),
                  "c is (2, 2) but op(a) @ op(b) is (2, 5)");
  EXPECT_FG_ERROR(fg::ops::gemm(a, false, Tensor::zeros({3, 2}, DType::F64), false, c),
                  "dtypes differ: a f32, b f64, c f32");
  EXPECT_FG_ERROR(
      fg::ops::gemm(a, false, Tensor::zeros({3, 2}), false, c, 1, 0, Tensor::zeros({3})),
      "bias is (3,) but expected (2,)");
  EXPECT_FG_ERROR(fg::ops::matmul(Tensor::zeros({2, 3, 4}), false, b, false), "must be 2-D");
}

// A wider c takes the sums of narrower operands unrounded: f32 operands into f64 on
// the CPU (computed in f64), bf16 into f32 on the GPU; other mixes are errors.
TEST(Gemm, WiderC) {
  EXPECT_TRUE(fg::ops::gemm_accepts(DType::BF16, DType::F32, Device::cpu()));
  EXPECT_TRUE(fg::ops::gemm_accepts(DType::F32, DType::F64, Device::cpu()));
  EXPECT_FALSE(fg::ops::gemm_accepts(DType::F32, DType::F64, Device::cuda(0)));
  EXPECT_FALSE(fg::ops::gemm_accepts(DType::F64, DType::F32, Device::cpu()));
  Generator gen(3);
  Tensor a = Tensor::randn({5, 7}, gen, DType::F32), b = Tensor::randn({6, 7}, gen, DType::F32);
  Tensor c = Tensor::randn({5, 6}, gen, DType::F64), want = c.clone();
  fg::ops::gemm(f64(a), false, f64(b), true, want, 0.5, 1.0);
  fg::ops::gemm(a, false, b, true, c, 0.5, 1.0);
  EXPECT_EQ(fg::max_abs_diff(c, want), 0.0);
  EXPECT_FG_ERROR(fg::ops::gemm(f64(a), false, f64(b), true, Tensor::zeros({5, 6})),
                  "gemm: dtypes differ: a f64, b f64, c f32");
}

// A GemmBatch queues products until flush (c untouched before), then runs them: the
// same bits as gemm one by one on the CPU, products of different problems and scalars
// among them; callbacks after the products.
TEST(GemmBatch, QueuesUntilFlushThenRunsLikeGemm) {
  Generator gen(11);
  std::vector<Tensor> a, b, c, want;
  for (int i = 0; i < 5; ++i) {
    const int64_t m = i < 3 ? 4 : 6, n = 3, k = i < 3 ? 5 : 2;
    a.push_back(Tensor::randn({k, m}, gen, DType::F32));  // transposed, as dy in dW = dy^T x
    b.push_back(Tensor::randn({k, n}, gen, DType::F32));
    c.push_back(Tensor::randn({m, n}, gen, DType::F64));
    want.push_back(c.back().clone());
  }
  const double beta[5] = {0, 1, 0, 1, 1};
  for (int i = 0; i < 5; ++i) fg::ops::gemm(a[i], true, b[i], false, want[i], 1.0, beta[i]);
  std::vector<std::vector<double>> before;
  for (const Tensor& t : c) before.push_back(t.to_vector());
  int callbacks = 0;
  {
    fg::ops::GemmBatch batch;
    for (int i = 0; i < 5; ++i)
      fg::ops::gemm_batchable(a[i], true, b[i], false, c[i], 1.0, beta[i]);
    // Groups by first appearance: {0, 2} (beta 0), {1}, {3, 4}. A callback runs after the
    // group that writes what it reads, before the groups after it.
    fg::ops::after_gemm_batch(c[4], [&] {
      ++callbacks;
      EXPECT_EQ(fg::max_abs_diff(c[4], want[4]), 0.0);
    });
    fg::ops::after_gemm_batch(c[2], [&] {
      ++callbacks;
      EXPECT_EQ(fg::max_abs_diff(c[2], want[2]), 0.0);
      EXPECT_EQ(c[1].to_vector(), before[1]);  // a later group: not yet
    });
    fg::ops::after_gemm_batch(Tensor::zeros({2}), [&] { ++callbacks; });  // nothing queued: now
    EXPECT_EQ(callbacks, 1);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(c[i].to_vector(), before[i]) << i;  // queued
    batch.flush();
  }
  EXPECT_EQ(callbacks, 3);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(fg::max_abs_diff(c[i], want[i]), 0.0) << i;
  // No batch open: at once.
  fg::ops::gemm_batchable(a[0], true, b[0], false, c[0], 1.0, 1.0);
  fg::ops::gemm(a[0], true, b[0], false, want[0], 1.0, 1.0);
  EXPECT_EQ(fg::max_abs_diff(c[0], want[0]), 0.0);
  fg::ops::after_gemm_batch(c[0], [&] { ++callbacks; });
  EXPECT_EQ(callbacks, 4);
}

// Order is kept where it matters: a second product into a queued c, an operand a queued
// product writes, and a buffer synced before another writer touches it each run the
// queue first. A closed or never-flushed batch runs nothing.
TEST(GemmBatch, KeepsOrderWhereProductsMeet) {
  Generator gen(12);
  Tensor a = Tensor::randn({5, 4}, gen, DType::F64), b = Tensor::randn({5, 3}, gen, DType::F64);
  Tensor b2 = Tensor::randn({5, 3}, gen, DType::F64);
  Tensor want = Tensor::zeros({4, 3}, DType::F64);
  fg::ops::gemm(a, true, b, false, want);
  fg::ops::gemm(a, true, b2, false, want, 1.0, 1.0);
  Tensor c = Tensor::full({4, 3}, NAN, DType::F64);
  {
    fg::ops::GemmBatch batch;
    fg::ops::gemm_batchable(a, true, b, false, c);             // c = a^T b
    fg::ops::gemm_batchable(a, true, b2, false, c, 1.0, 1.0);  // c += a^T b2: after it
    batch.flush();
  }
  EXPECT_LT(fg::max_abs_diff(c, want), 1e-12);

  // c2 = a2^T c reads the c a queued product writes.
  Tensor a2 = Tensor::randn({4, 2}, gen, DType::F64), c2 = Tensor::zeros({2, 3}, DType::F64);
  Tensor want2 = Tensor::zeros({2, 3}, DType::F64);
  fg::ops::gemm(a, true, b, false, c);
  fg::ops::gemm(a2, true, c, false, want2);
  c.fill_(NAN);
  {
    fg::ops::GemmBatch batch;
    fg::ops::gemm_batchable(a, true, b, false, c);
    fg::ops::gemm_batchable(a2, true, c, false, c2);
    batch.flush();
  }
  EXPECT_LT(fg::max_abs_diff(c2, want2), 1e-12);

  // Another writer syncs first (the engine does, before it adds to a gradient buffer).
  c.fill_(NAN);
  {
    fg::ops::GemmBatch batch;
    fg::ops::gemm_batchable(a, true, b, false, c);
    fg::ops::gemm_batch_sync(Tensor::zeros({3}, DType::F64));  // elsewhere: still queued
    EXPECT_TRUE(fg::has_non_finite(c));
    fg::ops::gemm_batch_sync(c.slice(0, 1, 2));  // a row of it: the queue runs
    EXPECT_FALSE(fg::has_non_finite(c));
  }

  // A callback that queues a product (the batch is open while callbacks run): the flush
  // runs it too.
  c.fill_(NAN);
  c2.fill_(NAN);
  {
    fg::ops::GemmBatch batch;
    fg::ops::gemm_batchable(a, true, b, false, c);
    fg::ops::after_gemm_batch(c, [&] { fg::ops::gemm_batchable(a2, true, c, false, c2); });
    batch.flush();
  }
  EXPECT_LT(fg::max_abs_diff(c2, want2), 1e-12);

  c.fill_(NAN);
  {
    fg::ops::GemmBatch closed(false);  // a no-op scope: products run at once
    fg::ops::gemm_batchable(a, true, b, false, c);
    EXPECT_FALSE(fg::has_non_finite(c));
  }
  c.fill_(NAN);
  {
    fg::ops::GemmBatch dropped;
    fg::ops::gemm_batchable(a, true, b, false, c);
  }  // not flushed: nothing ran
  EXPECT_TRUE(fg::has_non_finite(c));
  fg::ops::gemm_batchable(a, true, b, false, c);  // and nothing stays open
  EXPECT_FALSE(fg::has_non_finite(c));
}

TEST(GemmBatch, ErrorsAtTheCallNotAtTheFlush) {
  fg::ops::GemmBatch batch;
  EXPECT_FG_ERROR(fg::ops::gemm_batchable(Tensor::zeros({5, 4}), true, Tensor::zeros({6, 3}), false,
                                          Tensor::zeros({4, 3})),
                  "gemm: op(a) is (4, 5) but op(b) is (6, 3)");
  batch.flush();
}

// ---------------------------------------------------------------------------
// CUDA: cuBLASLt against the CPU reference in f64.

struct GemmCase {
  int64_t m, n, k;
  bool trans_a, trans_b;
};

std::string case_name(const GemmCase& c) {
  return "m" + std::to_string(c.m) + "_n" + std::to_string(c.n) + "_k" + std::to_string(c.k) +
         (c.trans_a ? "_At" : "_A") + (c.trans_b ? "_Bt" : "_B");
}

std::vector<GemmCase> cuda_cases() {
  std::vector<GemmCase> cases;
  for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{
           {1, 1, 1}, {7, 13, 5}, {33, 17, 65}, {129, 75, 257}, {3, 300, 2}, {250, 1, 97}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) cases.push_back({m, n, k, ta, tb});
  return cases;
}

double tolerance(DType dtype) {
  switch (dtype) {
    case DType::BF16:
      return 1e-2;
    case DType::F32:
      return 1e-5;
    default:
      return 1e-12;
  }
}

struct Operands {
  Tensor a, b, c, bias;  // on the GPU, in the dtype under test
};

// a: (m, k) or (k, m); b: (k, n) or (n, k); c (m, n); bias (n). With `wide`,
// a and b are column slices of wider matrices, so their leading dimension
// exceeds their width.
Operands make_operands(const GemmCase& g, DType dtype, uint64_t seed, bool wide = false) {
  Generator gen(seed);
  Device gpu = Device::cuda(0);
  Shape sa = g.trans_a ? Shape{g.k, g.m} : Shape{g.m, g.k};
  Shape sb = g.trans_b ? Shape{g.n, g.k} : Shape{g.k, g.n};
  auto make = [&](const Shape& s) {
    int64_t extra = wide ? 3 : 0;
    Tensor t = Tensor::randn({s[0], s[1] + extra}, gen, dtype, gpu);
    return t.slice(1, 0, s[1]);
  };
  Operands o;
  o.a = make(sa);
  o.b = make(sb);
  o.c = Tensor::randn({g.m, g.n}, gen, dtype, gpu);
  o.bias = Tensor::randn({g.n}, gen, dtype, gpu);
  return o;
}

class GemmCuda : public ::testing::TestWithParam<GemmCase> {};

// How beta's term is given: none (c itself), an addend laid out like c (read in
// cuBLASLt's epilogue), or one with a wider row stride (copied into c first).
enum class Addend { kNone, kLikeC, kWider };

void check_gemm(const GemmCase& g, DType dtype, double alpha, double beta, bool bias, bool wide,
                Addend addend = Addend::kNone) {
  Operands o = make_operands(g, dtype, 100 + g.m + g.n + g.k, wide);
  Tensor c_ref = f64(o.c);
  fg::ops::gemm(f64(o.a), g.trans_a, f64(o.b), g.trans_b, c_ref, alpha, beta,
                bias ? f64(o.bias) : Tensor());
  Tensor add;
  if (addend != Addend::kNone) {
    Tensor wider =
        Tensor::full({g.m, g.n + (addend == Addend::kWider ? 5 : 0)}, NAN, dtype, o.c.device());
    add = wider.slice(1, 0, g.n);
    add.copy_(o.c);
  }
  if (beta == 0.0 || add.defined()) o.c.fill_(NAN);  // c is not read
  fg::ops::gemm(o.a, g.trans_a, o.b, g.trans_b, o.c, alpha, beta, bias ? o.bias : Tensor(), add);
  EXPECT_FALSE(fg::has_non_finite(o.c));
  EXPECT_TRUE(close_rel(o.c, c_ref, tolerance(dtype)))
      << dtype_name(dtype) << " alpha " << alpha << " beta " << beta << " bias " << bias
      << " addend " << static_cast<int>(addend);
}

TEST_P(GemmCuda, F32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_gemm(GetParam(), DType::F32, 1.0, 0.0, false, false);
  check_gemm(GetParam(), DType::F32, 1.0, 0.0, true, false);   // bias epilogue
  check_gemm(GetParam(), DType::F32, 0.7, 1.3, true, false);   // bias with beta != 0
  check_gemm(GetParam(), DType::F32, -2.0, 1.0, false, true);  // accumulate, wide operands
  check_gemm(GetParam(), DType::F32, 1.0, 1.0, false, false, Addend::kLikeC);
  check_gemm(GetParam(), DType::F32, 0.5, 2.0, true, true, Addend::kWider);
}

TEST_P(GemmCuda, Bf16MatchesCpu) {
  FG_REQUIRE_GPU();
  check_gemm(GetParam(), DType::BF16, 1.0, 0.0, false, false);
  check_gemm(GetParam(), DType::BF16, 1.0, 0.0, true, true);
  check_gemm(GetParam(), DType::BF16, 0.5, 1.0, true, false);
  check_gemm(GetParam(), DType::BF16, 1.0, 1.0, false, false, Addend::kLikeC);  // a residual
}

// bf16 operands into an f32 c (weight gradients into f32 master gradients),
// overwritten and accumulated: the fp32 sums, not their bf16 rounding.
TEST_P(GemmCuda, Bf16IntoF32MatchesCpu) {
  FG_REQUIRE_GPU();
  const GemmCase& g = GetParam();
  Operands o = make_operands(g, DType::BF16, 7 + g.m + g.n);
  for (double beta : {0.0, 1.0}) {
    Generator gen(g.k);
    Tensor c = Tensor::randn({g.m, g.n}, gen, DType::F32, Device::cuda(0));
    Tensor c_ref = f64(c);
    fg::ops::gemm(f64(o.a), g.trans_a, f64(o.b), g.trans_b, c_ref, 1.0, beta);
    fg::ops::gemm(o.a, g.trans_a, o.b, g.trans_b, c, 1.0, beta);
    EXPECT_EQ(c.dtype(), DType::F32);
    EXPECT_TRUE(close_rel(c, c_ref, 1e-5)) << "beta " << beta;  // bf16 output would miss 1e-5
  }
}

TEST_P(GemmCuda, F64MatchesCpu) {
  FG_REQUIRE_GPU();
  check_gemm(GetParam(), DType::F64, 1.0, 0.0, true, false);
  check_gemm(GetParam(), DType::F64, 0.25, -1.5, false, true);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmCuda, ::testing::ValuesIn(cuda_cases()),
                         [](const auto& info) { return case_name(info.param); });

// Weight-gradient products batched in pointer-array cuBLASLt calls: every product of
// a group matches f64, into f32 overwritten and accumulated, at odd shapes and at one
// too many for a call (kMaxBatch 128: 130 products, a call of 128 and one of 2).
TEST(GemmCudaEdge, BatchedProductsMatchTheCpu) {
  FG_REQUIRE_GPU();
  struct Group {
    int64_t m, n, k;
    int count;
  };
  for (const Group& g : {Group{77, 45, 300, 12}, Group{256, 384, 1024, 6}, Group{8, 16, 24, 130}}) {
    for (double beta : {0.0, 1.0}) {
      Generator gen(g.m + g.count);
      std::vector<Tensor> a, b, c, want;
      for (int i = 0; i < g.count; ++i) {
        a.push_back(Tensor::randn({g.k, g.m}, gen, DType::BF16, Device::cuda(0)));
        b.push_back(Tensor::randn({g.k, g.n}, gen, DType::BF16, Device::cuda(0)));
        c.push_back(Tensor::randn({g.m, g.n}, gen, DType::F32, Device::cuda(0)));
        want.push_back(f64(c.back()));
        fg::ops::gemm(f64(a.back()), true, f64(b.back()), false, want.back(), 1.0, beta);
      }
      {
        fg::ops::GemmBatch batch;
        for (int i = 0; i < g.count; ++i)
          fg::ops::gemm_batchable(a[i], true, b[i], false, c[i], 1.0, beta);
        batch.flush();
      }
      for (int i = 0; i < g.count; ++i)
        EXPECT_TRUE(close_rel(c[i], want[i], 1e-5))
            << g.m << "x" << g.n << "x" << g.k << " product " << i << " beta " << beta;
    }
  }
}

TEST(GemmCudaEdge, RepeatedCallsReuseTheCachedPlan) {
  FG_REQUIRE_GPU();
  // The same shape twice (cached plan), then another shape, then the first again.
  GemmCase g1{37, 29, 41, false, true}, g2{29, 37, 41, true, false};
  for (const GemmCase& g : {g1, g1, g2, g1}) check_gemm(g, DType::F32, 1.0, 0.0, true, false);
}

// Tuned plans (each candidate timed on the call's operands): still the CPU's results,
// and an accumulating call adds its product once, though every candidate ran on it.
TEST(GemmCudaEdge, TunedPlansMatchTheCpuAndAccumulateOnce) {
  FG_REQUIRE_GPU();
  fg::ops::set_gemm_tuning(true);
  // Shapes no other test uses, so their plans are made (and tuned) here; the first two
  // are large enough for cuBLASLt to offer several algorithms.
  for (GemmCase g : {GemmCase{1024, 768, 512, false, true}, GemmCase{768, 1024, 640, true, false},
                     GemmCase{131, 67, 193, false, false}}) {
    check_gemm(g, DType::F32, 0.5, 1.0, false, false);
    check_gemm(g, DType::BF16, 1.0, 0.0, true, false);
    Operands o = make_operands(g, DType::BF16, 11);
    Tensor c = Tensor::ones({g.m, g.n}, DType::F32, Device::cuda(0));
    Tensor c_ref = f64(c);
    fg::ops::gemm(f64(o.a), g.trans_a, f64(o.b), g.trans_b, c_ref, 1.0, 1.0);
    fg::ops::gemm(o.a, g.trans_a, o.b, g.trans_b, c, 1.0, 1.0);
    EXPECT_TRUE(close_rel(c, c_ref, 1e-5)) << case_name(g);
  }
  fg::ops::set_gemm_tuning(false);
}

TEST(GemmCudaEdge, MatmulAllocatesAndWritesEveryElement) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  Generator gen(5);
  Tensor a = Tensor::randn({45, 71}, gen, DType::BF16, gpu);
  Tensor b = Tensor::randn({53, 71}, gen, DType::BF16, gpu);
  poison_pool({{45, 53}}, DType::BF16, gpu);
  Tensor c = fg::ops::matmul(a, false, b, true);
  EXPECT_TRUE(c.is_cuda());
  EXPECT_EQ(c.dtype(), DType::BF16);
  EXPECT_FALSE(fg::has_non_finite(c));
  EXPECT_TRUE(close_rel(c, fg::ops::matmul(f64(a), false, f64(b), true), 1e-2));
}

TEST(GemmCudaEdge, EmptyInnerDimensionGivesBetaCPlusBias) {
  FG_REQUIRE_GPU();
  Device gpu = Device::cuda(0);
  Tensor a = Tensor::zeros({3, 0}, DType::F32, gpu), b = Tensor::zeros({0, 5}, DType::F32, gpu);
  Tensor c = Tensor::full({3, 5}, 2.0, DType::F32, gpu);
  Tensor bias = Tensor::full({5}, 1.0, DType::F32, gpu);
  fg::ops::gemm(a, false, b, false, c, 1.0, 0.5, bias);
  EXPECT_EQ(fg::sum(c), 15 * 2.0);
  fg::ops::gemm(a, false, b, false, c, 1.0, 2.0, Tensor(),
                Tensor::full({3, 5}, 3.0, DType::F32, gpu));
  EXPECT_EQ(fg::sum(c), 15 * 6.0);
  Tensor e = fg::ops::matmul(Tensor::zeros({0, 4}, DType::F32, gpu), false,
                             Tensor::zeros({4, 6}, DType::F32, gpu), false);
  EXPECT_EQ(e.shape(), (Shape{0, 6}));
}

TEST(GemmCudaEdge, DeviceMismatchIsAnError) {
  FG_REQUIRE_GPU();
  Tensor a = Tensor::zeros({2, 3}, DType::F32, Device::cuda(0)), b = Tensor::zeros({3, 2});
  EXPECT_FG_ERROR(fg::ops::matmul(a, false, b, false), "gemm: a is on cuda:0 but b is on cpu");
}

}  // namespace
