#include "autograd/gradcheck.h"

#include <cmath>

namespace fg::ag {

namespace {
// L = sum_j <outputs_j, weights_j>, in f64 on the host.
double project(const std::vector<Variable>& outputs, const std::vector<Tensor>& weights) {
  double total = 0;
  for (size_t j = 0; j < outputs.size(); ++j) {
    auto o = outputs[j].data().to_vector();
    auto w = weights[j].to_vector();
    for (size_t i = 0; i < o.size(); ++i) total += o[i] * w[i];
  }
  return total;
}
}  // namespace

GradCheckResult gradcheck(const MultiFn& fn, const std::vector<Variable>& inputs,
                          const GradCheckOptions& opt) {
  // Analytic gradients: backward from every output with its projection weights.
  std::vector<Variable> leaves;
  for (const Variable& in : inputs) leaves.emplace_back(in.data().clone(), in.requires_grad());
  std::vector<Variable> outputs = fn(leaves);
  Generator gen(opt.seed);
  std::vector<Tensor> weights;
  std::vector<Variable> roots;
  std::vector<Tensor> root_grads;
  for (const Variable& o : outputs) {
    weights.push_back(Tensor::uniform(o.shape(), gen, -1.0, 1.0, o.dtype(), o.device()));
    if (o.requires_grad()) {
      roots.push_back(o);
      root_grads.push_back(weights.back());
    }
  }
  FG_CHECK(!roots.empty(), "gradcheck: no output depends on an input that requires grad");
  backward(roots, root_grads);

  GradCheckResult r;
  r.passed = true;
  NoGradGuard no_grad;
  for (size_t k = 0; k < leaves.size(); ++k) {
    if (!leaves[k].requires_grad()) continue;
    FG_CHECK(leaves[k].grad().defined(), "gradcheck: input ", k, " got no gradient");
    std::vector<double> analytic = leaves[k].grad().to_vector();
    std::vector<double> base = inputs[k].data().to_vector();
    const Tensor& orig = inputs[k].data();
    std::vector<Variable> probe = leaves;
    for (size_t i = 0; i < base.size(); ++i) {
      auto eval = [&](double delta) {
        std::vector<double> moved = base;
        moved[i] += delta;
        probe[k] = Variable(Tensor::from_vector(moved, orig.shape(), orig.dtype(), orig.device()));
        return project(fn(probe), weights);
      };
      double numeric = (eval(opt.eps) - eval(-opt.eps)) / (2 * opt.eps);
      double err = std::fabs(analytic[i] - numeric);
      double rel = err / std::max(std::fabs(numeric), opt.atol);
      bool ok = err <= opt.atol + opt.rtol * std::fabs(numeric);  // NaN fails here
      if (!ok) r.passed = false;
      if (!(err <= r.max_abs_error)) {
        r.max_abs_error = err;
        r.worst = str_cat("input ", k, ", element ", i, ": analytic ", analytic[i], ", numeric ",
                          numeric);
      }
      r.max_rel_error = std::max(r.max_rel_error, rel);
      r.checked += 1;
    }
  }
  return r;
}

}  // namespace fg::ag
