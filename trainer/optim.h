// AdamW over the model's parameter table (decay only on >= 2-D parameters),
// the learning-rate schedule and gradient clipping.
#pragma once

#include <vector>

#include "autograd/variable.h"
#include "dist/ddp.h"
#include "ops/adamw/adamw.h"
#include "trainer/model.h"

namespace fg::trainer {

struct ScheduleConfig {
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup_steps = 100;
  int64_t total_steps = 1000;  // the cosine reaches min_lr here
};

// Linear warmup from lr/warmup to lr over warmup_steps, then cosine to min_lr.
double lr_at(const ScheduleConfig& s, int64_t step);

class AdamW {
 public:
  // States are f32 like the master weights (f64 when the parameters are f64).
  // With `shard` (ZeRO-1) this rank keeps states only for its pieces of the
  // parameters and step() updates only those, from the reducer's mean
  // gradient pieces, then all-gathers the parameters.
  AdamW(const std::vector<ag::Variable>& params, const std::vector<ParamSpec>& specs, double beta1,
        double beta2, double eps, double weight_decay, dist::GradReducer* shard = nullptr);

  // One update from the gradients currently in the parameters (sharded: in the
  // reducer's pieces). The learning rate, step count, clipping and the
  // non-finite skip come from `inputs`, read on the device when the update runs,
  // so a step captured in a CUDA graph replays with the current values. The
  // caller counts the steps that were applied (set_step_count).
  void step(const ops::AdamWStepInputs& inputs);

  // Copies of the parameters in another dtype (table order; undefined entries
  // have none), e.g. the model's compute copies, that every step keeps equal to
  // the parameters cast: bf16 copies of f32 parameters are written by the
  // update itself, the others (and all of them when sharded, after the
  // gather) by a cast after it.
  void keep_copies(std::vector<Tensor> copies);

  // Updates applied so far: the next one corrects its bias with step_count() + 1.
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t s) { step_ = s; }
  // The states of every parameter, in table order. Sharded, this gathers them
  // from all ranks: a collective every rank must call.
  std::vector<Tensor> exp_avg() const;
  std::vector<Tensor> exp_avg_sq() const;
  // Sets the states from full per-parameter tensors (table order, any device
  // and float dtype); sharded, each rank takes its pieces.
  void load_state(const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq);
  // Bytes of this rank's states (for memory summaries; no collective).
  int64_t state_bytes() const;
  double beta1() const { return beta1_; }
  double beta2() const { return beta2_; }
  double eps() const { return eps_; }
  double weight_decay() const { return weight_decay_; }

 private:
  ops::AdamWHyper hyper() const;  // weight decay applies where an entry's decay is set
  std::vector<ag::Variable> params_;
  std::vector<bool> decay_;
  dist::GradReducer* shard_;
  // One per parameter, or sharded one per piece (1-D).
  std::vector<Tensor> exp_avg_, exp_avg_sq_;
  std::vector<Tensor> copies_;  // empty, or one per parameter (see keep_copies)
  bool update_writes(size_t i) const;  // the update itself writes copies_[i]
  void cast_copies(bool all) const;    // the copies the update did not write (all: every one)
  double beta1_, beta2_, eps_, weight_decay_;
  int64_t step_ = 0;
};

// The gradients of the parameters, in table order (undefined ones become zeros).
std::vector<Tensor> gradients(const std::vector<ag::Variable>& params);

}  // namespace fg::trainer
