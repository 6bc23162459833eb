// HDF5 checkpoints (the schema in DESIGN.md "Files other tools read", documented in
// docs/checkpoint.md) and gradient dumps. Writes are atomic: a crash mid-save leaves the
// previous file intact.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "trainer/config.h"

namespace fg::trainer {

// Parameter-named CPU tensors ("layers.0.attn.wqkv.weight"), in model order.
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

inline constexpr const char* kCheckpointFormat = "fusegpt";
inline constexpr int64_t kCheckpointFormatVersion = 1;

struct CheckpointData {
  GPTConfig config;
  int64_t step = 0;
  int64_t tokens_seen = 0;
  // Saved as float32 from any float dtype; loaded as f32 CPU tensors, in saved order.
  // exp_avg and exp_avg_sq hold exactly the names and shapes of model.
  NamedTensors model, exp_avg, exp_avg_sq;
  struct {
    double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
    int64_t step = 0;
  } optimizer;
  // Attributes of /trainer (seed, data position, RNG state: everything exact resume
  // needs). One name lives in one map only.
  std::map<std::string, int64_t> trainer_ints;
  std::map<std::string, double> trainer_floats;
  std::map<std::string, std::string> trainer_strings;
  std::string tokenizer_kind = "byte";   // "byte" or "char"
  std::vector<uint8_t> tokenizer_vocab;  // "char" only: the characters in id order
};

// Writes the checkpoint atomically (path + ".tmp", flush, fsync, rename, fsync the
// directory). On failure path is untouched and the temp file removed.
void save_checkpoint(const std::string& path, const CheckpointData& data);

// Reads and validates a checkpoint; every problem is a one-line fg::Error naming the file
// ("ck.h5: no such file", "ck.h5: format_version 2 is not supported ...").
CheckpointData load_checkpoint(const std::string& path);

// Checks loaded tensors against the model's parameter table: missing, extra and mis-shaped
// names give "ck.h5: layers.0.attn.wo.weight is (64, 64) but the model expects (96, 96)".
void check_model_tensors(const std::string& path, const NamedTensors& got,
                         const std::vector<std::pair<std::string, Shape>>& expected);

// Gradient dump (gradcheck --dump-grads): root attribute loss, /grads float32 datasets.
// Written atomically like a checkpoint.
void save_grad_dump(const std::string& path, double loss, const NamedTensors& grads);
// Returns the loss and replaces *grads with the dump's tensors (f32 CPU, saved order).
double load_grad_dump(const std::string& path, NamedTensors* grads);

}  // namespace fg::trainer
