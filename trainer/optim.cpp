#include "trainer/optim.h"

#include <cmath>

namespace fg::trainer {

double lr_at(const ScheduleConfig& s, int64_t step) {
  if (s.warmup_steps > 0 && step < s.warmup_steps)
    return s.lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  if (step >= s.total_steps) return s.min_lr;
  double span = static_cast<double>(std::max<int64_t>(1, s.total_steps - s.warmup_steps));
  double progress = static_cast<double>(step - s.warmup_steps) / span;
  return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1.0 + std::cos(M_PI * progress));
}

AdamW::AdamW(const std::vector<ag::Variable>& params, const std::vector<ParamSpec>& specs,
             double beta1, double beta2, double eps, double weight_decay)
    : params_(params), beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay) {
  FG_CHECK(params.size() == specs.size(), "AdamW: ", params.size(), " parameters but ",
           specs.size(), " specs");
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i].data();
    decay_.push_back(specs[i].decay && p.dim() >= 2);
    exp_avg_.push_back(Tensor::zeros(p.shape(), p.dtype(), p.device()));
    exp_avg_sq_.push_back(Tensor::zeros(p.shape(), p.dtype(), p.device()));
  }
}

void AdamW::step(double lr) {
  ++step_;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) continue;  // unused this step: no update, like PyTorch
    ops::AdamWHyper h{lr, beta1_, beta2_, eps_, decay_[i] ? weight_decay_ : 0.0, step_};
    ops::adamw_step(params_[i].data(), params_[i].grad(), exp_avg_[i], exp_avg_sq_[i], h);
  }
}

std::vector<Tensor> gradients(const std::vector<ag::Variable>& params) {
  std::vector<Tensor> g;
  for (const ag::Variable& p : params) {
    if (!p.grad().defined())
      const_cast<ag::Variable&>(p).set_grad(
          Tensor::zeros(p.data().shape(), p.data().dtype(), p.data().device()));
    g.push_back(p.grad());
  }
  return g;
}

}  // namespace fg::trainer
