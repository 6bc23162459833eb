// gemm_hopper_bf16: the Hopper GEMM of gemm_hopper.cuh with its plain epilogue (bf16 out,
// optional bias), behind Tensors.
#include <utility>

#include "ops/gemm/gemm_hopper.cuh"
#include "ops/gemm/gemm_hopper.h"

namespace fg::ops::detail {

const char* gemm_schedule_name(GemmSchedule schedule) {
  switch (schedule) {
    case GemmSchedule::kCooperative:
      return "cooperative";
    case GemmSchedule::kPingPong:
      return "pingpong";
    case GemmSchedule::kCooperative2Cta:
      return "cooperative_2cta";
    case GemmSchedule::kPingPong2Cta:
      return "pingpong_2cta";
  }
  return "unknown";
}

std::optional<GemmSchedule> gemm_schedule_from_name(std::string_view name) {
  for (GemmSchedule s : kGemmSchedules)
    if (name == gemm_schedule_name(s)) return s;
  return std::nullopt;
}

bool gemm_hopper_available() {
  return cuda::sm90a_kernels_run();
}

void gemm_hopper_bf16(const Tensor& a, const Tensor& b, const Tensor& c, const Tensor& bias,
                      GemmSchedule schedule, BLayout b_layout) {
  const char* op = "gemm_hopper_bf16";
  check_defined(op, "a", a);
  check_defined(op, "b", b);
  check_defined(op, "c", c);
  FG_CHECK(a.dim() == 2 && b.dim() == 2 && c.dim() == 2, op, ": a, b and c must be 2-D, got ",
           a.shape_str(), ", ", b.shape_str(), ", ", c.shape_str());
  const bool kn = b_layout == BLayout::kKN;
  const int64_t M = a.size(0), K = a.size(1), N = b.size(kn ? 1 : 0);
  FG_CHECK(b.size(kn ? 0 : 1) == K, op, ": a is ", a.shape_str(), " but b is ", b.shape_str(),
           kn ? " (expected (" : " (expected (N, ", K, kn ? ", N))" : "))");
  FG_CHECK(!kn || schedule == GemmSchedule::kCooperative || schedule == GemmSchedule::kPingPong, op,
           ": a (K, N) b runs in the cooperative and pingpong schedules, not ",
           gemm_schedule_name(schedule));
  check_shape(op, "c", c, {M, N});
  const std::pair<const char*, const Tensor*> operands[] = {{"a", &a}, {"b", &b}, {"c", &c}};
  for (const auto& [name, t] : operands) {
    check_dtype(op, name, *t, DType::BF16);
    check_same_device(op, "a", a, name, *t);
    FG_CHECK(t->strides()[1] == 1, op, ": ", name, " ", t->describe(), " needs contiguous rows");
  }
  FG_CHECK(a.is_cuda(), op, ": a is ", a.describe(), ", expected a CUDA tensor");
  if (bias.defined()) {
    check_shape(op, "bias", bias, {N});
    check_dtype(op, "bias", bias, DType::BF16);
    check_same_device(op, "a", a, "bias", bias);
  }
  FG_CHECK(M < (int64_t{1} << 31) && N < (int64_t{1} << 31) && K < (int64_t{1} << 31), op, ": ",
           a.shape_str(), " @ ", b.shape_str(), "^T is too large");
  if (M == 0 || N == 0) return;
  FG_CHECK(c.strides()[0] % 8 == 0 && c.starts_aligned(16), op, ": c ", c.describe(),
           " must start 16-byte aligned with a row stride that is a ",
           "multiple of 8 elements (TMA stores it)");
  const Tensor bias_c = bias.defined() ? bias.contiguous() : Tensor();  // packed (N)
  const hopper::StoreBf16 epi{
      hopper::kmajor_map(c.data<bf16>(), M, N, c.strides()[0], hopper::kStoreBox),
      bias_c.defined() ? bias_c.data<bf16>() : nullptr, static_cast<int>(N)};
  const auto launch = [&]<GemmSchedule kSchedule, BLayout kB = BLayout::kNK>() {
    hopper::launch_gemm_tn<kSchedule, kB>(a.data<bf16>(), a.strides()[0], b.data<bf16>(),
                                          b.strides()[0], static_cast<int>(M), static_cast<int>(N),
                                          static_cast<int>(K), epi, cuda::stream());
  };
  switch (schedule) {
    case GemmSchedule::kCooperative:
      if (kn) return launch.operator()<GemmSchedule::kCooperative, BLayout::kKN>();
      return launch.operator()<GemmSchedule::kCooperative>();
    case GemmSchedule::kPingPong:
      if (kn) return launch.operator()<GemmSchedule::kPingPong, BLayout::kKN>();
      return launch.operator()<GemmSchedule::kPingPong>();
    case GemmSchedule::kCooperative2Cta:
      return launch.operator()<GemmSchedule::kCooperative2Cta>();
    case GemmSchedule::kPingPong2Cta:
      return launch.operator()<GemmSchedule::kPingPong2Cta>();
  }
}

}  // namespace fg::ops::detail
