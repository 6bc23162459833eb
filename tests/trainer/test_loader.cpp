// The data loader: split sizes, determinism, world-size invariance of the
// global batch, val batches and errors.
#include <unistd.h>

#include <filesystem>

#include "test_util.h"
#include "trainer/loader.h"

namespace fs = std::filesystem;
using namespace fg::trainer;

namespace {

// Token i is i % vocab, so a row's first input tells where its window starts.
std::vector<int32_t> ramp(int64_t n, int32_t vocab) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>(i % vocab);
  return t;
}

std::vector<int32_t> ints(const fg::Tensor& t) {
  std::vector<int32_t> out(t.numel());
  std::copy(t.data<int32_t>(), t.data<int32_t>() + t.numel(), out.begin());
  return out;
}

}  // namespace

TEST(Loader, SplitSizes) {
  DataLoader loader(ramp(1005, 256), 256, 0);
  EXPECT_EQ(loader.size(), 1005);
  EXPECT_EQ(loader.val_size(), 100);
  EXPECT_EQ(loader.train_size(), 905);
}

TEST(Loader, TrainBatchShapesTargetsAndRange) {
  const int64_t n = 10'000, B = 8, T = 16;
  DataLoader loader(ramp(n, 60000), 60000, 1);
  for (int64_t step = 0; step < 50; ++step) {
    Batch b = loader.train_batch(step, 0, 1, B, T);
    ASSERT_EQ(b.inputs.shape(), (fg::Shape{B, T}));
    ASSERT_EQ(b.targets.shape(), (fg::Shape{B, T}));
    EXPECT_EQ(b.inputs.dtype(), fg::DType::I32);
    std::vector<int32_t> in = ints(b.inputs), tg = ints(b.targets);
    for (int64_t r = 0; r < B; ++r) {
      int32_t start = in[r * T];
      EXPECT_LE(start + T + 1, loader.train_size());  // never reads into val
      for (int64_t t = 0; t < T; ++t) {
        EXPECT_EQ(in[r * T + t], start + t);
        EXPECT_EQ(tg[r * T + t], start + t + 1);
      }
    }
  }
}

TEST(Loader, Deterministic) {
  DataLoader a(ramp(5000, 300), 300, 7), b(ramp(5000, 300), 300, 7), c(ramp(5000, 300), 300, 8);
  EXPECT_EQ(ints(a.train_batch(3, 0, 1, 4, 8).inputs), ints(b.train_batch(3, 0, 1, 4, 8).inputs));
  EXPECT_NE(ints(a.train_batch(3, 0, 1, 4, 8).inputs), ints(c.train_batch(3, 0, 1, 4, 8).inputs));
  EXPECT_NE(ints(a.train_batch(3, 0, 1, 4, 8).inputs), ints(a.train_batch(4, 0, 1, 4, 8).inputs));
  EXPECT_NE(ints(a.train_batch(3, 0, 1, 4, 8, 0).inputs),
            ints(a.train_batch(3, 0, 1, 4, 8, 1).inputs));
}

TEST(Loader, GlobalBatchIsTheSameForAnyWorldSize) {
  DataLoader loader(ramp(20'000, 1000), 1000, 42);
  const int64_t T = 32, global_b = 8;
  for (int64_t step : {0, 1, 17}) {
    for (int micro : {0, 3}) {
      std::vector<int32_t> one = ints(loader.train_batch(step, 0, 1, global_b, T, micro).inputs);
      for (int world : {2, 4, 8}) {
        std::vector<int32_t> joined;
        for (int rank = 0; rank < world; ++rank) {
          std::vector<int32_t> part =
              ints(loader.train_batch(step, rank, world, global_b / world, T, micro).inputs);
          joined.insert(joined.end(), part.begin(), part.end());
        }
        EXPECT_EQ(joined, one) << "step " << step << " micro " << micro << " world " << world;
      }
    }
  }
}

TEST(Loader, ValBatchesWalkTheValSplit) {
  const int64_t n = 1000, T = 9, B = 3;
  DataLoader loader(ramp(n, 1000), 1000, 0);
  ASSERT_EQ(loader.train_size(), 900);
  const int64_t windows = (100 - 1) / T;  // 11
  EXPECT_EQ(loader.val_batches(B, T), 4);
  std::vector<int32_t> starts;
  for (int64_t i = 0; i < loader.val_batches(B, T); ++i) {
    Batch b = loader.val_batch(i, B, T);
    std::vector<int32_t> in = ints(b.inputs), tg = ints(b.targets);
    for (int64_t r = 0; r < B; ++r) {
      starts.push_back(in[r * T]);
      EXPECT_EQ(tg[r * T + T - 1], in[r * T] + T);
    }
  }
  // Contiguous, non-overlapping windows from the start of val, then wrapping.
  for (int64_t w = 0; w < windows; ++w) EXPECT_EQ(starts[w], 900 + w * T);
  EXPECT_EQ(starts[windows], 900);
  EXPECT_EQ(ints(loader.val_batch(2, B, T).inputs), ints(loader.val_batch(2, B, T).inputs));
}

TEST(Loader, FromTokenFile) {
  fs::path dir = fs::temp_directory_path() / ("fg_test_loader_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string path = (dir / "tokens.bin").string();
  std::vector<int32_t> tokens = ramp(3000, 256);
  write_token_file(path, tokens, Tokenizer::byte_level());
  {
    DataLoader from_file(std::make_shared<const TokenFile>(path), 5);
    DataLoader from_vector(tokens, 256, 5);
    EXPECT_EQ(from_file.name(), path);
    EXPECT_EQ(from_file.vocab_size(), 256);
    EXPECT_EQ(ints(from_file.train_batch(2, 1, 2, 3, 10).inputs),
              ints(from_vector.train_batch(2, 1, 2, 3, 10).inputs));
    EXPECT_EQ(ints(from_file.val_batch(1, 2, 10).targets),
              ints(from_vector.val_batch(1, 2, 10).targets));
  }
  fs::remove_all(dir);
}

TEST(Loader, Errors) {
  DataLoader small(ramp(100, 50), 50, 0, "small.bin");  // 90 train, 10 val
  EXPECT_FG_ERROR(small.train_batch(0, 0, 1, 1, 10),
                  "small.bin: 100 tokens split into 90 train and 10 val");
  EXPECT_FG_ERROR(small.val_batch(0, 1, 10), "seq + 1 = 11");
  EXPECT_NO_THROW(small.val_batch(0, 1, 9));
  EXPECT_FG_ERROR(small.train_batch(0, 2, 2, 1, 4), "rank 2 is outside world size 2");
  EXPECT_FG_ERROR(small.train_batch(0, 0, 1, 0, 4), "micro batch must be >= 1");
  EXPECT_FG_ERROR(small.train_batch(0, 0, 1, 1, 4, 1 << 16), "micro step 65536");
  EXPECT_FG_ERROR(small.train_batch(-1, 0, 1, 1, 4), "step -1");
  EXPECT_FG_ERROR(DataLoader(ramp(10, 50), 5, 0), "token 5 is 5, outside the vocab [0, 5)");
  EXPECT_FG_ERROR(DataLoader(ramp(10, 5), 70000, 0), "vocab size must be in [1, 65536]");
}
