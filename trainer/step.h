// One optimizer step as device work: the batch in, forward and backward over the
// micro-batches, the gradient norm, clipping and AdamW, the loss and the norm out.
// Everything that changes from step to step (tokens, learning rate, step count)
// is read from fixed device buffers and nothing is read back inside the step, so
// on CUDA the whole step is captured once in a CUDA graph and replayed: one
// launch per step instead of hundreds, and no host synchronization until wait().
#pragma once

#include <memory>
#include <vector>

#include "dist/communicator.h"
#include "dist/ddp.h"
#include "trainer/loader.h"
#include "trainer/loop.h"
#include "trainer/model.h"
#include "trainer/optim.h"

namespace fg::ops {
class GradNormInBackward;
}

namespace fg::trainer {

struct StepStats {
  double loss = 0;       // mean over the micro-batches (and ranks)
  double grad_norm = 0;  // before clipping
  bool finite = true;    // false: the update was skipped
};

class TrainStep {
 public:
  // micro: sequences per micro-batch on this rank. The graph is used when
  // o.cuda_graph is set, the device is CUDA and the step has no host work
  // (no communicator, no gradient hook).
  TrainStep(const TrainOptions& o, const GPT& model, AdamW& opt, dist::GradReducer* reducer,
            int64_t micro);
  ~TrainStep();
  TrainStep(const TrainStep&) = delete;
  TrainStep& operator=(const TrainStep&) = delete;

  // Copies the step's micro-batches (grad_accum of them) and learning rate to
  // host staging (pinned on CUDA); the next launch() uploads them.
  void stage(const std::vector<Batch>& micro_batches, double lr);
  // Queues the staged step (a graph replay once captured) and returns at once.
  void launch();
  // Waits for the launched step and returns its numbers; counts the update in
  // the optimizer when it was applied.
  StepStats wait();

  // Forward and backward of the staged batch without an update: warms up
  // cuBLASLt plans and workspaces before a capture, and measures the memory.
  MemorySummary dry_run();

  bool uses_graph() const { return use_graph_; }

 private:
  void upload();
  void run(bool update);  // the device work of one step
  void capture();

  const TrainOptions& o_;
  const GPT& model_;
  AdamW& opt_;
  dist::GradReducer* reducer_;
  int64_t micro_;
  bool use_graph_;
  bool batch_weight_grads_;         // backward's weight products batched (ops::GemmBatch)
  std::vector<Tensor> grads_;       // persistent: the first gradient of a step is copied in
  std::vector<Tensor> copies_;      // the weights in the compute dtype, kept current by AdamW
  Tensor inputs_, targets_;         // (grad_accum, micro, seq) i32 on the device
  Tensor lr_step_;                  // (2) f64 on the device: lr, 1-based step
  Tensor loss_, grad_norm_;         // () results on the device
  // Without a communicator: the norm summed under the last backward (each gradient as
  // autograd finishes it), not in a pass after it. Shared with the gradients' hooks.
  std::shared_ptr<ops::GradNormInBackward> norm_;
  struct Staging;                   // pinned host buffers (CPU: plain vectors)
  std::unique_ptr<Staging> staging_;
  struct Graph;
  std::unique_ptr<Graph> graph_;
  StepStats ddp_stats_;             // data parallel: decided on the host inside run()
};

}  // namespace fg::trainer
