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
             double beta1, double beta2, double eps, double weight_decay, dist::GradReducer* shard)
    : params_(params),
      shard_(shard),
      beta1_(beta1),
      beta2_(beta2),
      eps_(eps),
      weight_decay_(weight_decay) {
  FG_CHECK(params.size() == specs.size(), "AdamW: ", params.size(), " parameters but ",
           specs.size(), " specs");
  FG_CHECK(!shard || shard->sharded(),
           "AdamW: the gradient reducer does not shard (ZeRO-1 needs one that does)");
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i].data();
    decay_.push_back(specs[i].decay && p.dim() >= 2);
    if (shard) continue;
    exp_avg_.push_back(Tensor::zeros(p.shape(), p.dtype(), p.device()));
    exp_avg_sq_.push_back(Tensor::zeros(p.shape(), p.dtype(), p.device()));
  }
  if (!shard) return;
  for (const dist::GradReducer::Piece& piece : shard->pieces()) {
    const Tensor& p = params[piece.param].data();
    exp_avg_.push_back(Tensor::zeros({piece.numel}, p.dtype(), p.device()));
    exp_avg_sq_.push_back(Tensor::zeros({piece.numel}, p.dtype(), p.device()));
  }
}

void AdamW::step(const ops::AdamWStepInputs& inputs) {
  if (shard_) {
    // The same update, elementwise, on this rank's pieces only.
    std::vector<Tensor> grads = shard_->piece_grads();
    const auto& pieces = shard_->pieces();
    std::vector<ops::AdamWTensors> entries;
    for (size_t k = 0; k < pieces.size(); ++k) {
      const dist::GradReducer::Piece& piece = pieces[k];
      Tensor param =
          params_[piece.param].data().view({-1}).slice(0, piece.offset, piece.offset + piece.numel);
      entries.push_back({param, grads[k], exp_avg_[k], exp_avg_sq_[k], decay_[piece.param]});
    }
    if (!entries.empty()) ops::adamw_step_multi(entries, hyper(), inputs);
    shard_->all_gather_params();
    cast_copies(true);
    return;
  }
  // One multi-tensor update (a single kernel launch on the GPU) for every parameter.
  std::vector<ops::AdamWTensors> entries;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) continue;  // unused this step: no update, like PyTorch
    entries.push_back({params_[i].data(), params_[i].grad(), exp_avg_[i], exp_avg_sq_[i], decay_[i],
                       update_writes(i) ? copies_[i] : Tensor()});
  }
  if (!entries.empty()) ops::adamw_step_multi(entries, hyper(), inputs);
  cast_copies(false);
}

void AdamW::keep_copies(std::vector<Tensor> copies) {
  FG_CHECK(copies.empty() || copies.size() == params_.size(), "AdamW: ", copies.size(),
           " copies for ", params_.size(), " parameters");
  for (size_t i = 0; i < copies.size(); ++i)
    FG_CHECK(!copies[i].defined() || copies[i].shape() == params_[i].data().shape(),
             "AdamW: copy ", i, " is ", copies[i].shape_str(), " but its parameter is ",
             params_[i].data().shape_str());
  copies_ = std::move(copies);
}

bool AdamW::update_writes(size_t i) const {
  return !copies_.empty() && copies_[i].defined() && copies_[i].dtype() == DType::BF16 &&
         params_[i].data().dtype() == DType::F32 && copies_[i].is_contiguous();
}

void AdamW::cast_copies(bool all) const {
  for (size_t i = 0; i < copies_.size(); ++i)
    if (copies_[i].defined() && (all || !update_writes(i))) copies_[i].copy_(params_[i].data());
}

ops::AdamWHyper AdamW::hyper() const {
  return ops::AdamWHyper{0.0, beta1_, beta2_, eps_, weight_decay_, step_ + 1};  // lr, t: from inputs
}

int64_t AdamW::state_bytes() const {
  int64_t n = 0;
  for (const auto* states : {&exp_avg_, &exp_avg_sq_})
    for (const Tensor& t : *states) n += static_cast<int64_t>(t.nbytes());
  return n;
}

std::vector<Tensor> AdamW::exp_avg() const {
  return shard_ ? shard_->gather_pieces(exp_avg_) : exp_avg_;
}
std::vector<Tensor> AdamW::exp_avg_sq() const {
  return shard_ ? shard_->gather_pieces(exp_avg_sq_) : exp_avg_sq_;
}

void AdamW::load_state(const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq) {
  FG_CHECK(exp_avg.size() == params_.size() && exp_avg_sq.size() == params_.size(),
           "AdamW: ", exp_avg.size(), " and ", exp_avg_sq.size(), " states for ", params_.size(),
           " parameters");
  std::vector<Tensor> m = shard_ ? shard_->pieces_of(exp_avg) : exp_avg;
  std::vector<Tensor> v = shard_ ? shard_->pieces_of(exp_avg_sq) : exp_avg_sq;
  for (size_t i = 0; i < exp_avg_.size(); ++i) {
    exp_avg_[i].copy_(m[i]);
    exp_avg_sq_[i].copy_(v[i]);
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
