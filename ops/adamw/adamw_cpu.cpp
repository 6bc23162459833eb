// AdamW: the checked public entries and the CPU reference (one loop per
// parameter over detail::adamw_update, which the CUDA kernel shares).
#include <cmath>

#include "ops/adamw/adamw.h"

namespace fg::ops {

namespace {

void check_hyper(const AdamWHyper& h) {
  FG_CHECK(h.step >= 1, "adamw: step is ", h.step, " but it is 1-based (the first step is 1)");
  FG_CHECK(h.beta1 >= 0 && h.beta1 < 1 && h.beta2 >= 0 && h.beta2 < 1, "adamw: betas (", h.beta1,
           ", ", h.beta2, ") must lie in [0, 1)");
  FG_CHECK(std::isfinite(h.lr) && h.lr >= 0, "adamw: lr is ", h.lr, " but must be finite and >= 0");
  FG_CHECK(h.eps >= 0, "adamw: eps is ", h.eps, " but must be >= 0");
  FG_CHECK(std::isfinite(h.weight_decay), "adamw: weight_decay is ", h.weight_decay);
}

// `who` names the entry in messages: "param" or "param 3".
void check_entry(const AdamWTensors& e, const std::string& who, const AdamWTensors& first) {
  const char* op = "adamw";
  check_defined(op, who.c_str(), e.param);
  const Tensor* states[] = {&e.grad, &e.exp_avg, &e.exp_avg_sq};
  const char* names[] = {"grad", "exp_avg", "exp_avg_sq"};
  FG_CHECK(e.param.dtype() == DType::F32 || e.param.dtype() == DType::F64, op, ": ", who, " is ",
           dtype_name(e.param.dtype()), " but only f32 and f64 parameters are supported");
  FG_CHECK(e.param.is_contiguous(), op, ": ", who, " ", e.param.shape_str(), " is not contiguous");
  for (int i = 0; i < 3; ++i) {
    const Tensor& s = *states[i];
    check_defined(op, names[i], s);
    FG_CHECK(s.shape() == e.param.shape(), op, ": ", who, " is ", e.param.shape_str(), " but ",
             names[i], " is ", s.shape_str());
    FG_CHECK(s.dtype() == e.param.dtype(), op, ": ", who, " is ", dtype_name(e.param.dtype()),
             " but ", names[i], " is ", dtype_name(s.dtype()));
    check_same_device(op, who.c_str(), e.param, names[i], s);
    FG_CHECK(s.is_contiguous(), op, ": ", names[i], " ", s.shape_str(), " is not contiguous");
  }
  FG_CHECK(e.param.dtype() == first.param.dtype(), op, ": ", who, " is ",
           dtype_name(e.param.dtype()), " but param 0 is ", dtype_name(first.param.dtype()));
  check_same_device(op, who.c_str(), e.param, "param 0", first.param);
}

void run(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper) {
#ifdef FG_CUDA
  if (params[0].param.is_cuda()) return detail::adamw_cuda(params, hyper);
#endif
  detail::adamw_cpu(params, hyper);
}

}  // namespace

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                const Tensor& exp_avg_sq, const AdamWHyper& hyper) {
  check_hyper(hyper);
  std::vector<AdamWTensors> one{{param, grad, exp_avg, exp_avg_sq, true}};
  check_entry(one[0], "param", one[0]);
  run(one, hyper);
}

void adamw_step_multi(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper) {
  check_hyper(hyper);
  if (params.empty()) return;
  for (size_t i = 0; i < params.size(); ++i)
    check_entry(params[i], str_cat("param ", i), params[0]);
  run(params, hyper);
}

namespace detail {

AdamWCoeffs adamw_coeffs(const AdamWHyper& h) {
  double t = static_cast<double>(h.step);
  return {h.beta1,
          h.beta2,
          h.eps,
          1.0 - h.lr * h.weight_decay,
          h.lr / (1.0 - std::pow(h.beta1, t)),
          std::sqrt(1.0 - std::pow(h.beta2, t))};
}

void adamw_cpu(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper) {
  AdamWCoeffs c = adamw_coeffs(hyper);
  for (const AdamWTensors& e : params) {
    dispatch_float("adamw", e.param.dtype(), [&]<class F>() {
      F* p = e.param.data<F>();
      const F* g = e.grad.data<F>();
      F* m = e.exp_avg.data<F>();
      F* v = e.exp_avg_sq.data<F>();
      F keep = static_cast<F>(e.decay ? c.decay_keep : 1.0);
      for (int64_t i = 0, n = e.param.numel(); i < n; ++i)
        adamw_update<F>(p[i], g[i], m[i], v[i], F(c.beta1), F(c.beta2), F(c.eps), keep,
                        F(c.step_size), F(c.sqrt_bc2));
    });
  }
}

}  // namespace detail

}  // namespace fg::ops
