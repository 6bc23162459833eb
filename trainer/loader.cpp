#include "trainer/loader.h"

#include <algorithm>

#include "core/error.h"
#include "core/philox.h"

namespace fg::trainer {

namespace {

// Train draws live at offsets >= 2^62, apart from the small offsets that model
// init takes from a Generator with the same seed.
constexpr uint64_t kTrainOffsetBase = uint64_t{1} << 62;
constexpr int64_t kMaxStep = int64_t{1} << 45;  // keeps base + step * kMaxMicroSteps < 2^63

}  // namespace

DataLoader::DataLoader(const std::vector<int32_t>& tokens, int64_t vocab_size, uint64_t seed,
                       std::string name)
    : vocab_size_(vocab_size), seed_(seed), name_(std::move(name)) {
  FG_CHECK(vocab_size >= 1 && vocab_size <= 65536, name_,
           ": vocab size must be in [1, 65536], got ", vocab_size);
  auto narrow = std::make_shared<std::vector<uint16_t>>(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    FG_CHECK(tokens[i] >= 0 && tokens[i] < vocab_size, name_, ": token ", i, " is ", tokens[i],
             ", outside the vocab [0, ", vocab_size, ")");
    (*narrow)[i] = static_cast<uint16_t>(tokens[i]);
  }
  tokens_ = *narrow;
  owner_ = std::move(narrow);
  train_size_ = size() - size() * kValPercent / 100;
}

DataLoader::DataLoader(std::shared_ptr<const TokenFile> file, uint64_t seed) : seed_(seed) {
  FG_CHECK(file != nullptr, "data loader: no token file given");
  tokens_ = file->tokens();
  vocab_size_ = file->vocab_size();
  name_ = file->path();
  owner_ = std::move(file);
  train_size_ = size() - size() * kValPercent / 100;
}

void DataLoader::check_seq(int64_t seq) const {
  FG_CHECK(seq >= 1, name_, ": sequence length must be >= 1, got ", seq);
  FG_CHECK(train_size_ >= seq + 1 && val_size() >= seq + 1, name_, ": ", size(),
           " tokens split into ", train_size_, " train and ", val_size(), " val (the last ",
           kValPercent, " %), but each split needs at least seq + 1 = ", seq + 1,
           " tokens; use a longer corpus or a shorter sequence");
}

Batch DataLoader::make_batch(const std::vector<int64_t>& starts, int64_t seq) const {
  const int64_t rows = static_cast<int64_t>(starts.size());
  std::vector<int32_t> inputs(static_cast<size_t>(rows * seq));
  std::vector<int32_t> targets(inputs.size());
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* window = tokens_.data() + starts[r];  // seq + 1 tokens
    for (int64_t t = 0; t < seq; ++t) {
      inputs[r * seq + t] = window[t];
      targets[r * seq + t] = window[t + 1];
    }
  }
  return {Tensor::from_ints(inputs, {rows, seq}), Tensor::from_ints(targets, {rows, seq})};
}

Batch DataLoader::train_batch(int64_t step, int rank, int world_size, int64_t micro_batch,
                              int64_t seq, int micro_step) const {
  FG_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, name_, ": rank ", rank,
           " is outside world size ", world_size);
  FG_CHECK(micro_batch >= 1, name_, ": micro batch must be >= 1, got ", micro_batch);
  FG_CHECK(step >= 0 && step < kMaxStep, name_, ": step ", step, " is outside [0, 2^45)");
  FG_CHECK(micro_step >= 0 && micro_step < kMaxMicroSteps, name_, ": micro step ", micro_step,
           " is outside [0, ", kMaxMicroSteps, ")");
  check_seq(seq);
  const uint64_t offset =
      kTrainOffsetBase + static_cast<uint64_t>(step * kMaxMicroSteps + micro_step);
  const int64_t num_starts = train_size_ - seq;  // starts 0 .. train_size - seq - 1
  std::vector<int64_t> starts(static_cast<size_t>(micro_batch));
  for (int64_t i = 0; i < micro_batch; ++i) {
    const uint64_t global_row = static_cast<uint64_t>(rank) * micro_batch + i;
    // u is in (0, 1]; u == 1 would land one past the last start.
    double u = philox_uniform(seed_, offset, global_row);
    starts[i] = std::min(static_cast<int64_t>(u * static_cast<double>(num_starts)), num_starts - 1);
  }
  return make_batch(starts, seq);
}

int64_t DataLoader::val_batches(int64_t micro_batch, int64_t seq) const {
  FG_CHECK(micro_batch >= 1, name_, ": micro batch must be >= 1, got ", micro_batch);
  check_seq(seq);
  const int64_t windows = (val_size() - 1) / seq;
  return (windows + micro_batch - 1) / micro_batch;
}

Batch DataLoader::val_batch(int64_t index, int64_t micro_batch, int64_t seq) const {
  FG_CHECK(index >= 0, name_, ": val batch index must be >= 0, got ", index);
  FG_CHECK(micro_batch >= 1, name_, ": micro batch must be >= 1, got ", micro_batch);
  check_seq(seq);
  // Window w covers tokens [w*T, w*T + T] of the val split: its targets end
  // where the next window's inputs begin, so no position is scored twice.
  const int64_t windows = (val_size() - 1) / seq;
  std::vector<int64_t> starts(static_cast<size_t>(micro_batch));
  for (int64_t i = 0; i < micro_batch; ++i)
    starts[i] = train_size_ + (index * micro_batch + i) % windows * seq;
  return make_batch(starts, seq);
}

}  // namespace fg::trainer
