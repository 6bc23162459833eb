// AdamW over the model's parameter table (decay only on >= 2-D parameters),
// the learning-rate schedule and gradient clipping.
#pragma once

#include <vector>

#include "autograd/variable.h"
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
  AdamW(const std::vector<ag::Variable>& params, const std::vector<ParamSpec>& specs,
        double beta1, double beta2, double eps, double weight_decay);

  // One update with learning rate lr from the gradients currently in the parameters.
  void step(double lr);

  int64_t step_count() const { return step_; }
  void set_step_count(int64_t s) { step_ = s; }
  const std::vector<Tensor>& exp_avg() const { return exp_avg_; }
  const std::vector<Tensor>& exp_avg_sq() const { return exp_avg_sq_; }
  double beta1() const { return beta1_; }
  double beta2() const { return beta2_; }
  double eps() const { return eps_; }
  double weight_decay() const { return weight_decay_; }

 private:
  std::vector<ag::Variable> params_;
  std::vector<bool> decay_;
  std::vector<Tensor> exp_avg_, exp_avg_sq_;
  double beta1_, beta2_, eps_, weight_decay_;
  int64_t step_ = 0;
};

// The gradients of the parameters, in table order (undefined ones become zeros).
std::vector<Tensor> gradients(const std::vector<ag::Variable>& params);

}  // namespace fg::trainer
