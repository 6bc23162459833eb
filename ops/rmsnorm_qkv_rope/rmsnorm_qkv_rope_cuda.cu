// The fused layer's projection on Hopper: one GEMM (gemm_hopper.cuh) whose
// epilogue adds the bias, rotates q and k and writes q, k and v in their final
// layouts, so nothing but the GEMM touches the qkv columns (the tile leaves by TMA in
// 64-column boxes; each lies in one head, so in one of q, k, v). A 256-column tile
// holds whole heads (head_dim 64 or 128), and a thread's fragment of a row holds
// each rotary pair (d, d + rotary_dim/2) when rotary_dim/2 is a multiple of 8, so
// the rotation needs no exchange between threads. The angles come from a
// (positions, rotary_dim/2) cos/sin table made first, with the RoPE kernel's
// arithmetic (f32 angle = position * inv_freq, sincosf). q and k are rotated in
// fp32 before their one rounding to bf16 (the composed path rounds the product
// first, then rotates).
#include <cmath>

#include "core/cuda_utils.h"
#include "ops/gemm/gemm_hopper.cuh"
#include "ops/gemm/gemm_hopper.h"
#include "ops/rmsnorm_qkv_rope/rmsnorm_qkv_rope.h"
#include "ops/rope/rope.h"

namespace fg::ops::detail {
namespace {

constexpr int kTileCols = 256;  // gemm_tn_kernel's output tile width

// The epilogue: row r of the product holds heads [col / kHd ...) of token r, the q heads,
// then k's, then v's. kHalf = rotary_dim / 2; dims at or past 2 kHalf pass through.
template <int kHd, int kHalf>
struct QKVRoPEStore {
  static_assert(kTileCols % kHd == 0 && kHd % hopper::kStoreBox == 0 && kHalf % 8 == 0 &&
                2 * kHalf <= kHd);
  static constexpr int kSteps = kHd / 8;  // j steps of 8 columns per head
  CUtensorMap q_map, k_map, v_map;        // (rows, heads * kHd), (rows, kv_heads * kHd) x 2
  const bf16* bias;                       // (qkv_dim) or null
  const float2* table;                    // (positions, kHalf)
  int rows, seq, heads, kv_heads;
  bool per_row;  // positions (B, T): one table row per row; (T): per t

  __device__ __forceinline__ void apply(int row, int col0, float (&v)[64]) const {
    if (row >= rows) return;
    const int tile = col0 & ~7, c2 = col0 & 7;  // col0 = tile + 2 (lane % 4)
    const float2* cs = table + static_cast<int64_t>(per_row ? row : row % seq) * kHalf;
#pragma unroll
    for (int hs = 0; hs < kTileCols / kHd; ++hs) {
      const int head = tile / kHd + hs;
      if (head >= heads + 2 * kv_heads) return;  // past qkv_dim: the last tile's edge
      float* x = v + 2 * hs * kSteps;            // x[2j + e]: dim 8j + c2 + e of the head
      if (bias) {                                // 4-byte pairs: dims 8j + c2, + 1 (c2 even)
#pragma unroll
        for (int j = 0; j < kSteps; ++j) {
          const uint32_t b = *reinterpret_cast<const uint32_t*>(bias + head * kHd + 8 * j + c2);
          x[2 * j] += __uint_as_float(b << 16);
          x[2 * j + 1] += __uint_as_float(b & 0xffff0000u);
        }
      }
      if (head < heads + kv_heads) {  // q and k rotate: pairs (j, j + kHalf / 8)
#pragma unroll
        for (int j = 0; j < kHalf / 8; ++j) {
          // (cos, sin) of dims 8j + c2 and 8j + c2 + 1 in one 16-byte load
          const float4 a = *reinterpret_cast<const float4*>(cs + 8 * j + c2);
          const float c[2] = {a.x, a.z}, sn[2] = {a.y, a.w};
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float lo = x[2 * j + e], hi = x[2 * (j + kHalf / 8) + e];
            x[2 * j + e] = lo * c[e] - hi * sn[e];
            x[2 * (j + kHalf / 8) + e] = hi * c[e] + lo * sn[e];
          }
        }
      }
    }
  }
  __device__ __forceinline__ void store(uint32_t box, int row0, int col) const {
    const int q_cols = heads * kHd, kv_cols = kv_heads * kHd;
    if (col < q_cols)
      hopper::tma_store_2d(&q_map, box, col, row0);
    else if (col < q_cols + kv_cols)
      hopper::tma_store_2d(&k_map, box, col - q_cols, row0);
    else if (col < q_cols + 2 * kv_cols)
      hopper::tma_store_2d(&v_map, box, col - q_cols - kv_cols, row0);
  }
};

template <int kHd, int kHalf>
void launch(const QKVRoPEConfig& cfg, const Tensor& n, const Tensor& wqkv, const Tensor& bias,
            const Tensor& table, bool per_row, int64_t T, const QKVRoPEOut& out,
            GemmSchedule schedule) {
  const int64_t rows = n.size(0), H = cfg.num_heads, Hkv = cfg.num_kv_heads;
  const auto map = [&](const Tensor& t, int64_t heads) {
    return hopper::kmajor_map(t.data<bf16>(), rows, heads * kHd, heads * kHd, hopper::kStoreBox);
  };
  const QKVRoPEStore<kHd, kHalf> epi{map(out.q, H),
                                     map(out.k, Hkv),
                                     map(out.v, Hkv),
                                     bias.defined() ? bias.data<bf16>() : nullptr,
                                     reinterpret_cast<const float2*>(table.raw_data()),
                                     static_cast<int>(rows),
                                     static_cast<int>(T),
                                     static_cast<int>(H),
                                     static_cast<int>(Hkv),
                                     per_row};
  const auto run = [&]<GemmSchedule kSchedule>() {
    hopper::launch_gemm_tn<kSchedule>(n.data<bf16>(), n.strides()[0], wqkv.data<bf16>(),
                                      wqkv.strides()[0], static_cast<int>(rows),
                                      static_cast<int>(cfg.qkv_dim()),
                                      static_cast<int>(cfg.hidden_dim), epi, cuda::stream());
  };
  switch (schedule) {
    case GemmSchedule::kCooperative:
      return run.template operator()<GemmSchedule::kCooperative>();
    case GemmSchedule::kPingPong:
      return run.template operator()<GemmSchedule::kPingPong>();
    case GemmSchedule::kCooperative2Cta:
      return run.template operator()<GemmSchedule::kCooperative2Cta>();
    case GemmSchedule::kPingPong2Cta:
      return run.template operator()<GemmSchedule::kPingPong2Cta>();
  }
}

}  // namespace

bool qkv_rope_projection_cuda(const QKVRoPEConfig& cfg, const Tensor& n, const Tensor& wqkv,
                              const Tensor& bias, const Tensor& positions, const Tensor& rope_table,
                              int64_t T, const QKVRoPEOut& out,
                              std::optional<GemmSchedule> schedule) {
  const int64_t hd = cfg.head_dim(), half = cfg.rotary_dim / 2, D = cfg.hidden_dim;
  const bool shape_ok =
      (hd == 64 && (half == 32 || half == 16)) || (hd == 128 && (half == 64 || half == 32));
  // No rows: nothing for a GEMM (and no tensor map of zero rows); the composed path returns.
  if (!shape_ok || n.dtype() != DType::BF16 || D % 8 != 0 || n.size(0) == 0 ||
      n.size(0) >= (int64_t{1} << 31) || !n.starts_aligned(16) || !wqkv.starts_aligned(16) ||
      !gemm_hopper_available())
    return false;
  const Tensor table = rope_table.defined()
                           ? rope_table
                           : rope_table_cuda(positions, cfg.rotary_dim, cfg.rope_theta);
  const bool per_row = positions.dim() == 2;
  // Ping-pong: one consumer's epilogue (the RoPE and the TMA stores) runs under the other's
  // products. H200, bench_fused_qkv with the schedules timed interleaved (bench/RESULTS.md):
  // 4-5 % ahead of cooperative at K = 4096, 12-13 % at K = 768; in the training step the 2-CTA
  // form at K <= 1024 took the baby's projections 212 -> 204 us per step (pingpong_schedule).
  const GemmSchedule chosen = schedule.value_or(pingpong_schedule(D));
  if (hd == 64 && half == 32) launch<64, 32>(cfg, n, wqkv, bias, table, per_row, T, out, chosen);
  if (hd == 64 && half == 16) launch<64, 16>(cfg, n, wqkv, bias, table, per_row, T, out, chosen);
  if (hd == 128 && half == 64) launch<128, 64>(cfg, n, wqkv, bias, table, per_row, T, out, chosen);
  if (hd == 128 && half == 32) launch<128, 32>(cfg, n, wqkv, bias, table, per_row, T, out, chosen);
  return true;
}

}  // namespace fg::ops::detail
