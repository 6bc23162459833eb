// The training loop: data, model, AdamW, schedule, clipping, eval, the
// non-finite guard, JSONL metrics, progress, checkpoints and exact resume.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "trainer/config.h"
#include "trainer/model.h"
#include "trainer/optim.h"
#include "trainer/tokenizer.h"

namespace fg::trainer {

struct TrainOptions {
  GPTConfig model;  // vocab_size 0: the data's vocabulary
  // Data: a text file (tokenized with `tokenizer`), a prepared token file, or
  // empty for the built-in synthetic Markov corpus.
  std::string data;
  std::string tokenizer = "char";
  int64_t synth_vocab = 8;
  int64_t synth_order = 2;
  int64_t synth_tokens = 1000000;
  double synth_concentration = 0.3;

  Device device = Device::cpu();
  DType dtype = DType::F32;  // compute dtype: f32, f64 (CPU checks) or bf16 (GPU, f32 masters)
  int64_t steps = 500;
  int64_t batch = 16;  // sequences per optimizer step (all micro-batches)
  int64_t seq = 64;
  int64_t grad_accum = 1;  // micro-batches per step; batch % grad_accum == 0
  ScheduleConfig schedule;
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8, weight_decay = 0.1;
  double clip = 1.0;  // <= 0: no clipping
  int64_t eval_every = 100;
  int64_t eval_batches = 32;
  Recompute recompute = Recompute::None;
  uint64_t seed = 1337;
  int64_t max_bad_steps = 5;  // abort after this many non-finite steps in a row

  std::string save;        // checkpoint path written at the end (and every save_every)
  int64_t save_every = 0;  // 0: only at the end
  std::string resume;      // checkpoint to continue from
  std::string log;         // JSONL metrics file
  bool progress = true;    // progress bar on a terminal, plain lines otherwise
  // CUDA: capture one training step in a CUDA graph and replay it (shapes are
  // static). Needs grad_accum == 1 and no communicator; falls back to eager otherwise.
  bool cuda_graph = true;
  // Without recomputation and alone (or in a world of one): backward queues its
  // weight-gradient products and runs them at its end, those of one shape (the same product
  // of every layer) as one batched call (ops::GemmBatch). Faster where single products
  // leave SMs idle (GPT-2-small, baby); keeps their operands until then. Several ranks keep
  // their all-reduce under backward instead.
  bool batch_weight_grads = true;

  // Data parallel: this process's (or thread's) rank in a world of ranks; null
  // trains alone. Every rank reads its own slice of each global batch of
  // `batch` sequences (batch / grad_accum / world_size per micro-batch), the
  // gradients are averaged across ranks in buckets of bucket_mb MB during
  // backward, and only rank 0 prints, logs and writes checkpoints (which hold
  // full optimizer states, so any world size can resume them).
  std::shared_ptr<dist::Communicator> comm;
  double bucket_mb = 25;
  int zero = 0;  // 1: shard the AdamW states across ranks (ZeRO-1)

  // For tests: called on the gradients (table order) before clipping; with a
  // communicator on the mean over ranks (under ZeRO-1 on this rank's 1-D
  // pieces of them, undefined for parameters it holds none of).
  std::function<void(const std::vector<Tensor>&)> gradient_hook;
};

// Bytes the run holds, as printed before step 0 (Storage's count of live bytes).
struct MemorySummary {
  int64_t params = 0;  // master weights and their compute-dtype copies
  int64_t grads = 0, optimizer = 0;
  int64_t activations = 0;  // peak during a step minus what lives between steps
  int64_t workspace = 0;    // cuBLASLt workspace and other per-device buffers
  int64_t peak = 0;         // the most live bytes at any point of a step
};

struct TrainResult {
  std::vector<double> losses;   // per step (bitwise reproducible for the same options)
  std::vector<double> step_ms;  // wall time of each step (the first ones include warm-up and capture)
  MemorySummary memory;
  bool cuda_graph = false;  // the steps replayed one captured CUDA graph
  double final_val_loss = 0;
  double best_val_loss = 0;
  int64_t best_val_step = -1;
  double entropy_rate = -1;  // synthetic corpus only: the best possible loss
  double tokens_per_s = 0;
  double seconds = 0;
  int64_t skipped_steps = 0;
};

TrainResult train(const TrainOptions& options);

// The model config stored in a checkpoint (for --resume without repeating flags).
GPTConfig load_checkpoint_config(const std::string& path);

// A model with the weights of a checkpoint (checked against the parameter table),
// and the tokenizer it was trained with.
struct LoadedModel {
  GPT model;
  Tokenizer tokenizer;
  int64_t step;
};
LoadedModel load_model(const std::string& path, Device device, DType dtype = DType::F32);

}  // namespace fg::trainer
