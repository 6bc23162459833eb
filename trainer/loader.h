// The data loader: (B, T) batches of token windows from a token array, split
// into train (first 90 %) and val (last 10 %).
//
// Train rows are sampled, not walked: row i of rank r at (step, micro_step)
// starts at an offset drawn by Philox from (seed, step, micro_step, global row
// r * B + i). A row depends only on its global index, so the rows of all ranks
// together are the same global batch whatever the world size, as long as
// B_local * world_size stays the same (rank r holds global rows
// [r * B_local, (r + 1) * B_local)). Resuming at a step needs no loader state.
//
// Val batches are fixed: contiguous, non-overlapping windows walking the val split.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "trainer/token_file.h"

namespace fg::trainer {

struct Batch {
  Tensor inputs;   // (B, T) i32, CPU
  Tensor targets;  // (B, T) i32, CPU: inputs shifted left by one token
};

class DataLoader {
 public:
  static constexpr int64_t kMaxMicroSteps = int64_t{1} << 16;  // micro steps per step
  static constexpr int64_t kValPercent = 10;

  // Ids must lie in [0, vocab_size), vocab_size <= 65536. `name` labels errors.
  DataLoader(const std::vector<int32_t>& tokens, int64_t vocab_size, uint64_t seed,
             std::string name = "in-memory tokens");
  // Reads the mapped file in place; the loader keeps it alive.
  DataLoader(std::shared_ptr<const TokenFile> file, uint64_t seed);

  // Rows for `rank` of `world_size` at (step, micro_step); see above.
  Batch train_batch(int64_t step, int rank, int world_size, int64_t micro_batch, int64_t seq,
                    int micro_step = 0) const;
  // Val batch `index`: rows index*B .. index*B + B-1 of the val windows, wrapping
  // around at the end of the split.
  Batch val_batch(int64_t index, int64_t micro_batch, int64_t seq) const;
  // How many val batches cover every val window once (the last may wrap).
  int64_t val_batches(int64_t micro_batch, int64_t seq) const;

  // Throws unless both splits hold at least seq + 1 tokens (one row); the batch
  // functions call it, a trainer may call it up front to fail fast.
  void check_seq(int64_t seq) const;

  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t train_size() const { return train_size_; }
  int64_t val_size() const { return size() - train_size_; }
  int64_t vocab_size() const { return vocab_size_; }
  uint64_t seed() const { return seed_; }
  const std::string& name() const { return name_; }

 private:
  Batch make_batch(const std::vector<int64_t>& starts, int64_t seq) const;

  std::shared_ptr<const void> owner_;  // keeps tokens_ alive (a vector or a TokenFile)
  std::span<const uint16_t> tokens_;
  int64_t train_size_ = 0;
  int64_t vocab_size_ = 0;
  uint64_t seed_ = 0;
  std::string name_;
};

}  // namespace fg::trainer
