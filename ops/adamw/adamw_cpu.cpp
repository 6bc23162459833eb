// AdamW: the checked public entries and the CPU reference (one loop per
// parameter over detail::adamw_update, which the CUDA kernel shares).
#include <cmath>

#include "ops/adamw/adamw.h"

namespace fg::ops {

namespace {

// The constants of every step; lr and step only where they come from the host.
void check_hyper(const AdamWHyper& h, bool host_values) {
  FG_CHECK(!host_values || h.step >= 1, "adamw: step is ", h.step,
           " but it is 1-based (the first step is 1)");
  FG_CHECK(h.beta1 >= 0 && h.beta1 < 1 && h.beta2 >= 0 && h.beta2 < 1, "adamw: betas (", h.beta1,
           ", ", h.beta2, ") must lie in [0, 1)");
  FG_CHECK(!host_values || (std::isfinite(h.lr) && h.lr >= 0), "adamw: lr is ", h.lr,
           " but must be finite and >= 0");
  FG_CHECK(h.eps >= 0, "adamw: eps is ", h.eps, " but must be >= 0");
  FG_CHECK(std::isfinite(h.weight_decay), "adamw: weight_decay is ", h.weight_decay);
}

// A one-element f32/f64 input on the params' device, when defined.
void check_scalar_input(const char* name, const Tensor& t, const Tensor& param0) {
  if (!t.defined()) return;
  FG_CHECK(t.numel() == 1 && (t.dtype() == DType::F32 || t.dtype() == DType::F64), "adamw: ", name,
           " is ", t.describe(), " but must be one f32 or f64 element");
  check_same_device("adamw", name, t, "param 0", param0);
}

void check_inputs(const AdamWStepInputs& in, const Tensor& param0) {
  check_defined("adamw", "lr_step", in.lr_step);
  FG_CHECK(in.lr_step.shape() == Shape{2} && in.lr_step.dtype() == DType::F64, "adamw: lr_step is ",
           in.lr_step.describe(), " but must be (2) f64: the learning rate and the 1-based step");
  check_same_device("adamw", "lr_step", in.lr_step, "param 0", param0);
  check_scalar_input("grad_norm", in.grad_norm, param0);
  check_scalar_input("loss", in.loss, param0);
  FG_CHECK(std::isfinite(in.max_norm) && in.max_norm >= 0, "adamw: max_norm is ", in.max_norm,
           " but must be finite and >= 0 (0: no clipping)");
  FG_CHECK(in.max_norm == 0 || in.grad_norm.defined(), "adamw: max_norm is ", in.max_norm,
           " but grad_norm is undefined; clipping needs the norm");
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
  if (e.param_copy.defined()) {
    const Tensor& c = e.param_copy;
    FG_CHECK(c.dtype() == DType::BF16 && e.param.dtype() == DType::F32, op, ": ", who, " is ",
             dtype_name(e.param.dtype()), " and its copy ", dtype_name(c.dtype()),
             " but copies are bf16 of f32 parameters");
    FG_CHECK(c.shape() == e.param.shape(), op, ": ", who, " is ", e.param.shape_str(),
             " but its copy is ", c.shape_str());
    check_same_device(op, who.c_str(), e.param, "param_copy", c);
    FG_CHECK(c.is_contiguous(), op, ": param_copy ", c.shape_str(), " is not contiguous");
  }
  FG_CHECK(e.param.dtype() == first.param.dtype(), op, ": ", who, " is ",
           dtype_name(e.param.dtype()), " but param 0 is ", dtype_name(first.param.dtype()));
  check_same_device(op, who.c_str(), e.param, "param 0", first.param);
}

void run(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper,
         const AdamWStepInputs& inputs) {
#ifdef FG_CUDA
  if (params[0].param.is_cuda()) return detail::adamw_cuda(params, hyper, inputs);
#endif
  detail::adamw_cpu(params, hyper, inputs);
}

// The host's lr and step as the (2) f64 tensor the update reads: two fills, no
// copy from the host (and no sync) on the GPU.
void run_host_values(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper) {
  AdamWStepInputs inputs;
  inputs.lr_step = Tensor::empty({2}, DType::F64, params[0].param.device());
  inputs.lr_step.slice(0, 0, 1).fill_(hyper.lr);
  inputs.lr_step.slice(0, 1, 2).fill_(static_cast<double>(hyper.step));
  run(params, hyper, inputs);
}

}  // namespace

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                const Tensor& exp_avg_sq, const AdamWHyper& hyper) {
  check_hyper(hyper, true);
  std::vector<AdamWTensors> one{{param, grad, exp_avg, exp_avg_sq, true}};
  check_entry(one[0], "param", one[0]);
  run_host_values(one, hyper);
}

void adamw_step_multi(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper) {
  check_hyper(hyper, true);
  if (params.empty()) return;
  for (size_t i = 0; i < params.size(); ++i)
    check_entry(params[i], str_cat("param ", i), params[0]);
  run_host_values(params, hyper);
}

void adamw_step_multi(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper,
                      const AdamWStepInputs& inputs) {
  check_hyper(hyper, false);
  if (params.empty()) return;
  for (size_t i = 0; i < params.size(); ++i)
    check_entry(params[i], str_cat("param ", i), params[0]);
  check_inputs(inputs, params[0].param);
  run(params, hyper, inputs);
}

namespace detail {

void adamw_cpu(const std::vector<AdamWTensors>& params, const AdamWHyper& hyper,
               const AdamWStepInputs& inputs) {
  std::vector<double> lr_step = inputs.lr_step.to_vector();
  auto value = [](const Tensor& t) { return t.defined() ? t.item() : 0.0; };
  AdamWCoeffs c =
      adamw_coeffs(hyper, {lr_step[0], lr_step[1], value(inputs.grad_norm), value(inputs.loss)},
                   inputs.max_norm);
  if (c.skip) return;
  for (const AdamWTensors& e : params) {
    dispatch_float("adamw", e.param.dtype(), [&]<class F>() {
      F* p = e.param.data<F>();
      const F* g = e.grad.data<F>();
      F* m = e.exp_avg.data<F>();
      F* v = e.exp_avg_sq.data<F>();
      F keep = static_cast<F>(e.decay ? c.decay_keep : 1.0);
      F clip = static_cast<F>(c.clip);
      bf16* copy = e.param_copy.defined() ? e.param_copy.data<bf16>() : nullptr;
      for (int64_t i = 0, n = e.param.numel(); i < n; ++i) {
        adamw_update<F>(p[i], g[i] * clip, m[i], v[i], F(hyper.beta1), F(hyper.beta2), F(hyper.eps),
                        keep, F(c.step_size), F(c.sqrt_bc2));
        if (copy) copy[i] = float_to_bf16(static_cast<float>(p[i]));
      }
    });
  }
}

}  // namespace detail

}  // namespace fg::ops
