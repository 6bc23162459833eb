#include <gtest/gtest.h>

#include <cmath>

#include "core/tensor.h"
#include "test_util.h"

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Tensor;

TEST(Tensor, CreationAndItem) {
  Tensor z = Tensor::zeros({2, 3});
  EXPECT_EQ(z.numel(), 6);
  EXPECT_EQ(fg::sum(z), 0.0);
  EXPECT_EQ(fg::sum(Tensor::ones({4, 5}, DType::F64)), 20.0);
  EXPECT_EQ(fg::sum(Tensor::full({3}, 2.5)), 7.5);
  auto a = Tensor::arange(5, DType::I32).to_vector();
  EXPECT_EQ(a, (std::vector<double>{0, 1, 2, 3, 4}));
  EXPECT_EQ(Tensor::full({}, 3.0).item(), 3.0);
  EXPECT_EQ(Tensor::zeros({}).shape_str(), "()");
  EXPECT_EQ(Tensor::zeros({7}).shape_str(), "(7,)");
  EXPECT_EQ(Tensor::zeros({4, 7, 33}).shape_str(), "(4, 7, 33)");
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor tt = t.transpose(0, 1);
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.contiguous().to_vector(), (std::vector<double>{0, 3, 1, 4, 2, 5}));
  Tensor s = t.slice(1, 1, 3);
  EXPECT_EQ(s.to_vector(), (std::vector<double>{1, 2, 4, 5}));
  s.fill_(9);
  EXPECT_EQ(t.to_vector(), (std::vector<double>{0, 9, 9, 3, 9, 9}));
  EXPECT_EQ(t.view({3, -1}).shape(), (fg::Shape{3, 2}));
  EXPECT_EQ(tt.reshape({6}).to_vector(), (std::vector<double>{0, 3, 9, 9, 9, 9}));
}

TEST(Tensor, DtypeConversionsRoundTrip) {
  Tensor t = Tensor::from_vector({1.0, -2.5, 3.25, 0.125}, {4}, DType::F64);
  EXPECT_EQ(t.to(DType::F32).to(DType::F64).to_vector(), t.to_vector());
  // bf16 keeps 8 bits of mantissa: 1.00390625 rounds to 1.0 (ties to even).
  Tensor b = Tensor::from_vector({1.00390625, 1.01171875, 3.0}, {3}, DType::F32).to(DType::BF16);
  EXPECT_EQ(b.to_vector(), (std::vector<double>{1.0, 1.015625, 3.0}));
}

TEST(Tensor, PhiloxIsDeterministicAndWellDistributed) {
  Generator g1(42), g2(42);
  Tensor a = Tensor::randn({10000}, g1), b = Tensor::randn({10000}, g2);
  EXPECT_EQ(fg::max_abs_diff(a, b), 0.0);
  Tensor c = Tensor::randn({10000}, g1);  // next draw differs
  EXPECT_GT(fg::max_abs_diff(a, c), 0.1);
  auto v = a.to_vector();
  double mean = 0, var = 0;
  for (double x : v) mean += x;
  mean /= v.size();
  for (double x : v) var += (x - mean) * (x - mean);
  var /= v.size();
  EXPECT_NEAR(mean, 0.0, 0.05);
  EXPECT_NEAR(var, 1.0, 0.05);
  Generator g3(7);
  auto u = Tensor::uniform({10000}, g3, 2.0, 3.0).to_vector();
  for (double x : u) ASSERT_TRUE(x >= 2.0 && x < 3.0);
}

TEST(Tensor, ErrorsNameBothSides) {
  Tensor a = Tensor::zeros({2, 3});
  EXPECT_FG_ERROR(a.view({4, 2}), "(2, 3)");
  EXPECT_FG_ERROR(a.slice(1, 2, 5), "out of range");
  EXPECT_FG_ERROR(a.data<double>(), "accessed as f64");
  EXPECT_FG_ERROR(a.copy_(Tensor::zeros({3, 2})), "destination is (2, 3) but source is (3, 2)");
  EXPECT_FG_ERROR(fg::parse_device("gpu"), "bad device 'gpu'");
  EXPECT_FG_ERROR(fg::dtype_from_name("f16"), "unknown dtype 'f16'");
}

TEST(Tensor, LiveBytesFollowLifetimes) {
  int64_t before = fg::Storage::live_bytes();
  {
    Tensor t = Tensor::zeros({1000}, DType::F64);
    EXPECT_EQ(fg::Storage::live_bytes() - before, 8000);
  }
  EXPECT_EQ(fg::Storage::live_bytes(), before);
}

TEST(TensorCuda, CopiesRoundTripAndKeepStrides) {
  FG_REQUIRE_GPU();
  Generator g(3);
  Tensor t = Tensor::randn({5, 7, 3}, g, DType::F64);
  Tensor d = t.to(Device::cuda());
  EXPECT_EQ(fg::max_abs_diff(d.to(Device::cpu()), t), 0.0);
  Tensor dt = d.transpose(0, 2).contiguous();
  EXPECT_EQ(fg::max_abs_diff(dt.to(Device::cpu()), t.transpose(0, 2).contiguous()), 0.0);
  Tensor bf = d.to(DType::BF16).to(Device::cpu());
  EXPECT_EQ(fg::max_abs_diff(bf, t.to(DType::BF16)), 0.0);
  Tensor z = Tensor::zeros({4, 4}, DType::F32, Device::cuda());
  z.slice(0, 1, 3).fill_(2.0);
  EXPECT_EQ(fg::sum(z), 16.0);
}

TEST(TensorCuda, PhiloxMatchesCpu) {
  FG_REQUIRE_GPU();
  Generator gc(99), gg(99);
  Tensor cpu = Tensor::randn({4097}, gc, DType::F32);
  Tensor gpu = Tensor::randn({4097}, gg, DType::F32, Device::cuda());
  EXPECT_LE(fg::max_abs_diff(cpu, gpu), 1e-6);  // double libm may differ in the last ulp
  Tensor ucpu = Tensor::uniform({4097}, gc, -1, 1, DType::F64);
  Tensor ugpu = Tensor::uniform({4097}, gg, -1, 1, DType::F64, Device::cuda());
  EXPECT_EQ(fg::max_abs_diff(ucpu, ugpu), 0.0);
}

TEST(TensorCuda, OutOfMemorySaysHowMuch) {
  FG_REQUIRE_GPU();
  // 4 TiB: more than any GPU has; the error names the request and the free memory.
  EXPECT_FG_ERROR(Tensor::empty({int64_t{1} << 40}, DType::F32, Device::cuda()),
                  "CUDA out of memory on cuda:0: asked for 4398046511104 bytes");
  Tensor ok = Tensor::zeros({16}, DType::F32, Device::cuda());  // the allocator still works
  EXPECT_EQ(fg::sum(ok), 0.0);
}

TEST(TensorCuda, ErrorWithoutGpuOrBadIndex) {
  if (fg::cuda_available()) {
    EXPECT_FG_ERROR(Tensor::zeros({2}, DType::F32, Device::cuda(999)), "cuda:999");
  } else {
    EXPECT_THROW(Tensor::zeros({2}, DType::F32, Device::cuda()), fg::Error);
  }
}
