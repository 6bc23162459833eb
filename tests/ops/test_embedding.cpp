// embedding: forward and backward (repeated ids accumulate) on hand-computed
// values, error messages; CUDA against the CPU in f64 (f32, bf16), NaN poison.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "ops/embedding/embedding.h"
#include "ops/grad_norm/grad_norm.h"
#include "test_util.h"

using fg::test::f64;
using fg::test::poison_pool;

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Shape;
using fg::Tensor;
using fg::ops::embedding_backward;
using fg::ops::embedding_forward;

namespace {

TEST(Embedding, ForwardGathersRows) {
  Tensor w = Tensor::from_vector({0, 1, 10, 11, 20, 21, 30, 31}, {4, 2});  // (V 4, D 2)
  Tensor ids = Tensor::from_ints({2, 0, 2, 3}, {2, 2});
  Tensor out = embedding_forward(w, ids);
  EXPECT_EQ(out.shape(), (Shape{2, 2, 2}));
  EXPECT_EQ(out.to_vector(), (std::vector<double>{20, 21, 0, 1, 20, 21, 30, 31}));
  // A scalar id gives one row; f64 works the same.
  Tensor one = embedding_forward(w.to(DType::F64), Tensor::from_ints({1}, {}));
  EXPECT_EQ(one.shape(), (Shape{2}));
  EXPECT_EQ(one.to_vector(), (std::vector<double>{10, 11}));
}

TEST(Embedding, BackwardAccumulatesRepeatedIds) {
  Tensor ids = Tensor::from_ints({2, 0, 2, 2}, {4});
  Tensor g = Tensor::from_vector({1, 2, 3, 4, 5, 6, 7, 8}, {4, 2}, DType::F64);  // (4, D 2)
  Tensor gw = embedding_backward(g, ids, 4);
  EXPECT_EQ(gw.shape(), (Shape{4, 2}));
  EXPECT_EQ(gw.dtype(), DType::F64);
  // row 0 <- g[1]; row 2 <- g[0] + g[2] + g[3]; rows 1 and 3 untouched
  EXPECT_EQ(gw.to_vector(), (std::vector<double>{3, 4, 0, 0, 1 + 5 + 7, 2 + 6 + 8, 0, 0}));
}

TEST(Embedding, BackwardIntoABufferOverwritesOrAdds) {
  Tensor ids = Tensor::from_ints({2, 0, 2}, {3});
  Tensor g = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2});  // f32 into f64
  Tensor into = Tensor::full({3, 2}, 10, DType::F64);
  Tensor out = embedding_backward(g, ids, 3, into, false);
  EXPECT_EQ(out.raw_data(), into.raw_data());
  EXPECT_EQ(into.to_vector(), (std::vector<double>{3, 4, 0, 0, 6, 8}));
  embedding_backward(g, ids, 3, into, true);  // untouched rows keep their value
  EXPECT_EQ(into.to_vector(), (std::vector<double>{6, 8, 0, 0, 12, 16}));
  EXPECT_FG_ERROR(embedding_backward(g, ids, 3, Tensor::zeros({3, 2}, DType::F64).transpose(0, 1)),
                  "embedding_backward: into is (2, 3)");
  EXPECT_FG_ERROR(embedding_backward(g, ids, 4, into), "but the gradient is a contiguous (4, 2)");
  EXPECT_FG_ERROR(embedding_backward(g.to(DType::F64), ids, 3, Tensor::zeros({3, 2})),
                  "embedding_backward: into is f32 but grad_out is f64 (expected the same dtype or "
                  "a wider one)");
}

TEST(Embedding, NonContiguousWeightAndIds) {
  Tensor wt = Tensor::from_vector({0, 10, 20, 1, 11, 21}, {2, 3}).transpose(0, 1);  // (3, 2)
  Tensor ids = Tensor::from_ints({2, 9, 1, 9}, {2, 2}).slice(1, 0, 1);              // [[2], [1]]
  EXPECT_EQ(embedding_forward(wt, ids).to_vector(), (std::vector<double>{20, 21, 10, 11}));
}

TEST(Embedding, ErrorsNameTheValues) {
  Tensor w = Tensor::zeros({4, 3});
  EXPECT_FG_ERROR(embedding_forward(w, Tensor::from_ints({1, 4}, {2})),
                  "embedding: id 4 at position 1 is out of range for vocab size 4");
  EXPECT_FG_ERROR(embedding_forward(w, Tensor::from_ints({-1}, {1})),
                  "id -1 at position 0 is out of range for vocab size 4");
  EXPECT_FG_ERROR(embedding_forward(w, Tensor::zeros({2})),
                  "embedding: ids is f32 but expected i32");
  EXPECT_FG_ERROR(embedding_forward(Tensor::zeros({12}), Tensor::from_ints({1}, {1})),
                  "embedding: weight must be (V, D), got (12,)");
  EXPECT_FG_ERROR(embedding_forward(Tensor(), Tensor::from_ints({1}, {1})),
                  "embedding: weight is undefined");
  Tensor ids = Tensor::from_ints({0, 1, 2}, {3});
  EXPECT_FG_ERROR(embedding_backward(Tensor::zeros({2, 3}), ids, 4),
                  "embedding_backward: grad_out is (2, 3) but ids is (3,)");
  EXPECT_FG_ERROR(embedding_backward(Tensor::zeros({3, 5}), ids, 2),
                  "embedding_backward: id 2 at position 2 is out of range for vocab size 2");
}

// ---------------------------------------------------------------------------
// CUDA against the CPU in f64 on the same (rounded) inputs.

struct EmbeddingCase {
  int64_t vocab, dim;
  Shape ids;
};

std::string case_name(const EmbeddingCase& c) {
  std::string s = "V" + std::to_string(c.vocab) + "_D" + std::to_string(c.dim) + "_ids";
  for (int64_t d : c.ids) s += "_" + std::to_string(d);
  return s;
}

// Random ids in [0, vocab) with many repeats (vocab is small next to the count).
Tensor random_ids(const Shape& shape, int64_t vocab, uint64_t seed) {
  Generator gen(seed);
  std::vector<double> u = Tensor::uniform(shape, gen, 0.0, 1.0, DType::F64).to_vector();
  std::vector<int32_t> ids(u.size());
  for (size_t i = 0; i < u.size(); ++i) ids[i] = static_cast<int32_t>(u[i] * vocab) % vocab;
  return Tensor::from_ints(ids, shape);
}

class EmbeddingCuda : public ::testing::TestWithParam<EmbeddingCase> {};

void check_embedding(const EmbeddingCase& c, DType dtype, double tol) {
  Device gpu = Device::cuda(0);
  Generator gen(3 + c.dim);
  Tensor w = Tensor::randn({c.vocab, c.dim}, gen, dtype, gpu);
  Tensor ids = random_ids(c.ids, c.vocab, 4 + c.vocab);
  Shape out_shape = c.ids;
  out_shape.push_back(c.dim);
  Tensor dout = Tensor::randn(out_shape, gen, dtype, gpu);

  poison_pool({out_shape}, dtype, gpu);
  Tensor out = embedding_forward(w, ids.to(gpu));
  EXPECT_TRUE(out.is_cuda());
  EXPECT_EQ(out.dtype(), dtype);
  EXPECT_FALSE(fg::has_non_finite(out));
  // A gather is exact in any dtype.
  EXPECT_EQ(fg::max_abs_diff(out, embedding_forward(f64(w), ids)), 0.0);

  poison_pool({{c.vocab, c.dim}}, dtype, gpu);
  Tensor gw = embedding_backward(dout, ids.to(gpu), c.vocab);
  EXPECT_EQ(gw.dtype(), dtype);
  EXPECT_FALSE(fg::has_non_finite(gw));
  EXPECT_TRUE(close_rel(gw, embedding_backward(f64(dout), ids, c.vocab), tol));
}

TEST_P(EmbeddingCuda, F32MatchesCpu) {
  FG_REQUIRE_GPU();
  check_embedding(GetParam(), DType::F32, 1e-5);
}

TEST_P(EmbeddingCuda, Bf16MatchesCpu) {
  FG_REQUIRE_GPU();
  check_embedding(GetParam(), DType::BF16, 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Shapes, EmbeddingCuda,
                         ::testing::Values(EmbeddingCase{1, 1, {1}}, EmbeddingCase{11, 5, {3, 7}},
                                           EmbeddingCase{13, 3, {2, 3, 5}},
                                           EmbeddingCase{257, 33, {4, 129}},
                                           EmbeddingCase{50, 1001, {3, 77}},
                                           EmbeddingCase{5, 768, {2, 1000}},
                                           EmbeddingCase{1000, 96, {7}}),
                         [](const auto& info) { return case_name(info.param); });

#ifdef FG_CUDA  // calls the CUDA entry points directly
TEST(EmbeddingCudaEdge, KernelsWriteEveryElement) {
  FG_REQUIRE_GPU();
  // Outputs handed in full of NaN: forward overwrites all, backward zeroes the
  // rows no id touches.
  Device gpu = Device::cuda(0);
  Generator gen(9);
  for (DType dtype : {DType::F32, DType::BF16, DType::F64}) {
    Tensor w = Tensor::randn({37, 19}, gen, dtype, gpu);
    Tensor ids = random_ids({5, 3}, 30, 10).to(gpu);
    Tensor out = Tensor::full({5, 3, 19}, NAN, dtype, gpu);
    fg::ops::detail::embedding_forward_cuda(w, ids, out);
    EXPECT_FALSE(fg::has_non_finite(out)) << dtype_name(dtype);
    Tensor gw = Tensor::full({37, 19}, NAN, dtype, gpu);
    fg::ops::detail::embedding_backward_cuda(Tensor::ones({5, 3, 19}, dtype, gpu), ids, gw, false);
    EXPECT_FALSE(fg::has_non_finite(gw)) << dtype_name(dtype);
    EXPECT_EQ(fg::sum(gw), 5 * 3 * 19) << dtype_name(dtype);
  }
}
#endif

TEST(EmbeddingCudaEdge, Bf16IntoF32BufferMatchesCpu) {
  FG_REQUIRE_GPU();
  // bf16 gradients summed into an f32 buffer (a master gradient), overwritten
  // then added to, against the CPU in f64 on the same bf16 values.
  Device gpu = Device::cuda(0);
  Generator gen(21);
  Tensor ids = random_ids({4, 300}, 97, 22);
  Tensor dout = Tensor::randn({4, 300, 40}, gen, DType::BF16, gpu);
  Tensor into = Tensor::full({97, 40}, NAN, DType::F32, gpu);
  Tensor want = embedding_backward(f64(dout), ids, 97);
  EXPECT_EQ(embedding_backward(dout, ids.to(gpu), 97, into).raw_data(), into.raw_data());
  EXPECT_TRUE(close_rel(into, want, 1e-6));
  embedding_backward(dout, ids.to(gpu), 97, into, true);
  fg::ops::scale_grads({want}, 2.0);
  EXPECT_TRUE(close_rel(into, want, 1e-6));
}

TEST(EmbeddingCudaEdge, BackwardGivesTheSameBitsEveryRun) {
  FG_REQUIRE_GPU();
  // Thousands of f32 rows into a few ids: summed by atomics, their order (and so
  // the last bits) would follow the scheduler.
  Device gpu = Device::cuda(0);
  Generator gen(23);
  Tensor ids = random_ids({16, 1024}, 7, 24).to(gpu);
  Tensor dout = Tensor::randn({16, 1024, 64}, gen, DType::F32, gpu);
  const std::vector<double> first = embedding_backward(dout, ids, 7).to_vector();
  for (int run = 0; run < 5; ++run)
    EXPECT_EQ(embedding_backward(dout, ids, 7).to_vector(), first) << "run " << run;
}

TEST(EmbeddingCudaEdge, OutOfRangeIdGivesNanRow) {
  FG_REQUIRE_GPU();
  // No host sync to check ids on the GPU: a bad id shows as a row of NaN, not as a
  // wild read; rows of 3 move element by element, bf16 rows of 16 in 16-byte packs.
  Device gpu = Device::cuda(0);
  for (const auto& [dtype, dim] : {std::pair{DType::F32, 3}, std::pair{DType::BF16, 16}}) {
    Tensor w = Tensor::ones({4, dim}, dtype, gpu);
    Tensor out = embedding_forward(w, Tensor::from_ints({1, 4, -2}, {3}, gpu));
    EXPECT_FALSE(fg::has_non_finite(out.slice(0, 0, 1))) << dtype_name(dtype);
    for (int64_t bad : {1, 2})
      for (double v : out.slice(0, bad, bad + 1).to_vector())
        EXPECT_TRUE(std::isnan(v)) << dtype_name(dtype) << " row " << bad;
    Tensor gw = embedding_backward(Tensor::ones({3, dim}, dtype, gpu),
                                   Tensor::from_ints({1, 4, -2}, {3}, gpu), 4);
    EXPECT_EQ(fg::sum(gw), static_cast<double>(dim)) << dtype_name(dtype);  // only id 1 adds
  }
}

TEST(EmbeddingCudaEdge, DeviceMismatchIsAnError) {
  FG_REQUIRE_GPU();
  Tensor w = Tensor::zeros({4, 3}, DType::F32, Device::cuda(0));
  EXPECT_FG_ERROR(embedding_forward(w, Tensor::from_ints({1}, {1})),
                  "embedding: ids is on cpu but weight is on cuda:0");
}

}  // namespace
