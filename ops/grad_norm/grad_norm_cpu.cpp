// Global gradient norm and clipping: the public entries (grouping the tensors
// by device) and the CPU loops. Sums of squares accumulate in f64.
#include <cmath>
#include <map>
#include <type_traits>
#include <utility>

#include "ops/grad_norm/grad_norm.h"

namespace fg::ops {

namespace {

// The defined gradients grouped by device, CPU first. Reading takes contiguous
// copies of strided gradients; writing in place refuses them.
std::map<std::pair<int, int>, std::vector<Tensor>> by_device(const char* op,
                                                             const std::vector<Tensor>& grads,
                                                             bool for_write) {
  std::map<std::pair<int, int>, std::vector<Tensor>> groups;
  for (size_t i = 0; i < grads.size(); ++i) {
    const Tensor& g = grads[i];
    if (!g.defined()) continue;
    FG_CHECK(g.dtype() == DType::F32 || g.dtype() == DType::F64 || g.dtype() == DType::BF16, op,
             ": grad ", i, " is ", dtype_name(g.dtype()),
             " but gradients must be f32, f64 or bf16");
    FG_CHECK(!for_write || g.is_contiguous(), op, ": grad ", i, " ", g.shape_str(),
             " is not contiguous");
    std::pair<int, int> key{g.is_cuda() ? 1 : 0, g.device().index};
    groups[key].push_back(for_write ? g : g.contiguous());
  }
  return groups;
}

template <class F>
double sum_squares(const F* p, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    double x;
    if constexpr (std::is_same_v<F, bf16>) {
      x = bf16_to_float(p[i]);
    } else {
      x = static_cast<double>(p[i]);
    }
    s += x * x;
  }
  return s;
}

// The one device of a group, for the tensor forms.
const std::vector<Tensor>* single_group(
    const char* op, const std::map<std::pair<int, int>, std::vector<Tensor>>& groups) {
  if (groups.empty()) return nullptr;
  const Tensor& first = groups.begin()->second.front();
  const Tensor& last = groups.rbegin()->second.front();
  FG_CHECK(groups.size() == 1, op, ": gradients on ", first.device().str(), " and ",
           last.device().str(), " but they must share one device (global_grad_norm takes several)");
  return &groups.begin()->second;
}

void check_factor(const Tensor& factor) {
  check_defined("scale_grads", "factor", factor);
  FG_CHECK(factor.numel() == 1 && (factor.dtype() == DType::F32 || factor.dtype() == DType::F64),
           "scale_grads: factor is ", factor.describe(), " but must be one f32 or f64 element");
}

}  // namespace

Tensor grad_norm(const std::vector<Tensor>& grads) {
  auto groups = by_device("grad_norm", grads, false);
  const std::vector<Tensor>* group = single_group("grad_norm", groups);
  if (!group) return Tensor::zeros({});
  DType dtype = DType::F64;
  for (const Tensor& g : *group)
    if (g.dtype() != DType::F64) dtype = DType::F32;
#ifdef FG_CUDA
  if (group->front().is_cuda()) return detail::grad_norm_cuda(*group, dtype);
#endif
  return Tensor::full({}, std::sqrt(detail::sum_squares_cpu(*group)), dtype);
}

void scale_grads(const std::vector<Tensor>& grads, const Tensor& factor) {
  check_factor(factor);
  auto groups = by_device("scale_grads", grads, true);
  const std::vector<Tensor>* group = single_group("scale_grads", groups);
  if (!group) return;
  check_same_device("scale_grads", "grad", group->front(), "factor", factor);
#ifdef FG_CUDA
  if (factor.is_cuda()) return detail::scale_cuda(*group, factor);
#endif
  detail::scale_cpu(*group, factor.item());
}

struct GradNormInBackward::Impl {
  std::vector<Tensor> grads;   // the defined ones
  std::vector<int64_t> index;  // per given gradient: its place in grads, or -1
  std::vector<bool> counted;   // per entry of grads, this pass
  bool active = false;
  DType dtype = DType::F64;
#ifdef FG_CUDA
  std::shared_ptr<detail::SideNorm> side;  // on the GPU
#endif
};

GradNormInBackward::GradNormInBackward(std::vector<Tensor> grads)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  auto groups = by_device("GradNormInBackward", grads, true);
  single_group("GradNormInBackward", groups);
  for (const Tensor& g : grads) {
    s.index.push_back(g.defined() ? static_cast<int64_t>(s.grads.size()) : -1);
    if (!g.defined()) continue;
    s.grads.push_back(g);
    if (g.dtype() != DType::F64) s.dtype = DType::F32;
  }
  s.counted.assign(s.grads.size(), false);
#ifdef FG_CUDA
  if (!s.grads.empty() && s.grads.front().is_cuda()) s.side = detail::side_norm_cuda(s.grads);
#endif
}

GradNormInBackward::~GradNormInBackward() = default;

void GradNormInBackward::start() {
  impl_->active = true;
}

void GradNormInBackward::ready(size_t i) {
  Impl& s = *impl_;
  if (!s.active || i >= s.index.size() || s.index[i] < 0 || s.counted[s.index[i]]) return;
  s.counted[s.index[i]] = true;
#ifdef FG_CUDA
  if (s.side) {
    const auto j = static_cast<size_t>(s.index[i]);
    detail::side_norm_count_cuda(*s.side, j, j + 1, true);
  }
#endif
}

Tensor GradNormInBackward::finish() {
  Impl& s = *impl_;
  std::vector<bool> counted(s.grads.size(), false);
  std::swap(counted, s.counted);  // the next pass starts with none counted
  s.active = false;
  if (s.grads.empty()) return Tensor::zeros({});
#ifdef FG_CUDA
  if (s.side) {
    // Each run of gradients not counted in backward in one launch.
    for (size_t j = 0; j < s.grads.size(); ++j) {
      if (counted[j]) continue;
      size_t end = j + 1;
      while (end < s.grads.size() && !counted[end]) ++end;
      detail::side_norm_count_cuda(*s.side, j, end, false);
      j = end;  // counted, or past the last
    }
    return detail::side_norm_finish_cuda(*s.side, s.dtype);
  }
#endif
  return Tensor::full({}, std::sqrt(detail::sum_squares_cpu(s.grads)), s.dtype);
}

double global_grad_norm(const std::vector<Tensor>& grads) {
  double total = 0;
  for (const auto& [key, group] : by_device("global_grad_norm", grads, false)) {
#ifdef FG_CUDA
    if (key.first == 1) {
      total += detail::sum_squares_cuda(group).item();  // the host sync
      continue;
    }
#endif
    total += detail::sum_squares_cpu(group);
  }
  return std::sqrt(total);
}

void scale_grads(const std::vector<Tensor>& grads, double factor) {
  // One kernel serves both forms: on the GPU the factor goes through a () tensor
  // written by a fill kernel (no copy from the host).
  for (const auto& [key, group] : by_device("scale_grads", grads, true))
    scale_grads(group, Tensor::full({}, factor, DType::F64, group.front().device()));
}

double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm) {
  FG_CHECK(max_norm > 0, "clip_grad_norm: max_norm is ", max_norm, " but must be > 0");
  double norm = global_grad_norm(grads);
  // A NaN or inf norm is returned as is with the gradients untouched: the
  // trainer's non-finite guard decides what to do with the step.
  if (std::isfinite(norm) && norm > max_norm) scale_grads(grads, max_norm / (norm + 1e-6));
  return norm;
}

namespace detail {

double sum_squares_cpu(const std::vector<Tensor>& grads) {
  double total = 0;
  for (const Tensor& g : grads) {
    switch (g.dtype()) {
      case DType::F32:
        total += sum_squares(g.data<float>(), g.numel());
        break;
      case DType::F64:
        total += sum_squares(g.data<double>(), g.numel());
        break;
      case DType::BF16:
        total += sum_squares(g.data<bf16>(), g.numel());
        break;
      default:
        FG_THROW("global_grad_norm: dtype ", dtype_name(g.dtype()), " is not supported");
    }
  }
  return total;
}

void scale_cpu(const std::vector<Tensor>& grads, double factor) {
  if (factor == 1.0) return;  // as the CUDA kernel: bits unchanged
  for (const Tensor& g : grads) {
    if (g.dtype() == DType::BF16) {
      bf16* p = g.data<bf16>();
      for (int64_t i = 0, n = g.numel(); i < n; ++i)
        p[i] = float_to_bf16(bf16_to_float(p[i]) * static_cast<float>(factor));
      continue;
    }
    dispatch_float("scale_grads", g.dtype(), [&]<class F>() {
      F* p = g.data<F>();
      F f = static_cast<F>(factor);
      for (int64_t i = 0, n = g.numel(); i < n; ++i) p[i] *= f;
    });
  }
}

}  // namespace detail

}  // namespace fg::ops
