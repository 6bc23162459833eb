// The Hopper GEMM of gemm_hopper.cuh behind Tensors, with its plain epilogue (bf16 out,
// optional bias), for tests, benchmarks and host code that cannot include device code.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "core/tensor.h"

namespace fg::ops::detail {

// How gemm_tn_kernel (gemm_hopper.cuh) shares the work between its two consumer warpgroups,
// and whether pairs of blocks share the B operand's loads. Every schedule hands the epilogue
// the same 64-value row segments of 256-column tiles.
enum class GemmSchedule {
  kCooperative,      // both warpgroups on one 128 x 256 tile, 64 rows each; epilogue after MMAs
  kPingPong,         // each warpgroup on its own 64 x 256 tile, taking turns on the tensor
                     // cores, so one's epilogue runs under the other's MMAs
  kCooperative2Cta,  // kCooperative in clusters of 2 blocks (tiles m, m + 1 of one column
                     // tile): each loads half of B's rows and multicasts it to both
  kPingPong2Cta,     // kPingPong in clusters of 2, B multicast the same way
};

// How the B operand is stored. kNK: (N, K), rows of K (a weight as x @ w^T reads it); kKN:
// (K, N), rows of N (a weight used untransposed, as backward's dx = dy @ w). kKN runs in the
// one-block schedules (kCooperative, kPingPong).
enum class BLayout { kNK, kKN };

inline constexpr GemmSchedule kGemmSchedules[] = {
    GemmSchedule::kCooperative, GemmSchedule::kPingPong, GemmSchedule::kCooperative2Cta,
    GemmSchedule::kPingPong2Cta};

// The ping-pong schedule for an epilogue that must hide under the products: with a short k
// loop (K <= kMulticastMaxK) the products wait on operand traffic from L2, which the 2-CTA
// clusters halve for B; in the training step (bench/RESULTS.md, session 25) that took
// GPT-2-small's (K = 768) LM head and gate/up products 3-6 % faster and made the seed's
// (K = 4096) 3-5 % slower.
inline constexpr int64_t kMulticastMaxK = 1024;
constexpr GemmSchedule pingpong_schedule(int64_t K) {
  return K <= kMulticastMaxK ? GemmSchedule::kPingPong2Cta : GemmSchedule::kPingPong;
}

// "cooperative", "pingpong", "cooperative_2cta", "pingpong_2cta".
const char* gemm_schedule_name(GemmSchedule schedule);
// The schedule of that name, or none.
std::optional<GemmSchedule> gemm_schedule_from_name(std::string_view name);

// Whether the current device runs it: a Hopper GPU and a build for sm_90a.
bool gemm_hopper_available();

// c = a @ b^T (+ bias), fp32 sums rounded to bf16 once. a (M, K), b (N, K) (or, kKN, b^T
// given as (K, N)), c (M, N), bias (N) or undefined: bf16 on the current CUDA device, rows
// contiguous; a, b and c 16-byte aligned with row strides (and K) multiples of 8 elements
// (TMA loads and stores them).
void gemm_hopper_bf16(const Tensor& a, const Tensor& b, const Tensor& c,
                      const Tensor& bias = Tensor(),
                      GemmSchedule schedule = GemmSchedule::kCooperative,
                      BLayout b_layout = BLayout::kNK);

}  // namespace fg::ops::detail
