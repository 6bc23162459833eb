// Flash-style causal GQA attention (FlashAttention-2) for bf16 with head_dim
// 64 or 128: tensor-core tiles (mma.sync m16n8k16, operands through ldmatrix),
// fp32 accumulation, K/V (forward) and Q/dO (backward) tiles double-buffered
// in shared memory with cp.async. No (T, T) matrix ever reaches device memory.
//
// Forward: a block owns kBlockM query rows of one (b, h), each warp 16 * kMTiles
// of them; it walks the key tiles up to the causal diagonal with an online
// softmax and writes out and lse. Backward: D = rowsum(dO * O) first; then a
// block owns kBlockN = 16 * kWarps key rows of one kv head (a warp 16 of them)
// and walks the query tiles at or after the diagonal of every query head of
// the group, so dK and dV are summed over the group in registers (no atomics);
// dQ goes through an f32 (B, T, H, hd) buffer by float2 atomics, then to bf16.
//
// On Hopper (sm_90a) both passes default to warp-specialized kernels, as
// FlashAttention-3: a producer warpgroup feeding TMA loads through mbarriers,
// two consumer warpgroups on warpgroup MMAs (wgmma); the forward's softmax runs
// under the products, the backward adds dQ by TMA reductions instead of atomics.
//
// Every kernel's grid is 1-D, its blocks walking heads in groups, heaviest tiles first
// within a group (grid_order.h), so the grid ends on light tiles.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <iterator>
#include <vector>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "core/wgmma.cuh"
#include "ops/attention/attention.h"
#include "ops/attention/grid_order.h"
#include "ops/gemm/gemm_hopper.cuh"
#include "ops/rope/rope.h"

namespace fg::ops::detail {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLn2 = 0.6931471805599453f;

// ---- PTX wrappers ----

// 16 bytes global -> shared, bypassing L1; src_bytes 0 writes zeros (rows past T).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most `kPending` of this thread's committed groups are in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d (16x8 f32) += a (16x16 bf16, row) * b (16x8 bf16, col).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t value) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(value));
}

// Two floats as bf16x2, `lo` in the low half (the lower column).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ void store_bf16x2(bf16* dst, uint32_t value) {
  *reinterpret_cast<uint32_t*>(dst) = value;
}

// ---- shared-memory tiles ----

// Byte offset of element (row, col) of a (rows, kCols) bf16 tile whose 16-byte
// chunks are XOR-swizzled: chunk c of row r sits at chunk c ^ (r % 8). The 8
// rows one ldmatrix phase (or one cp.async wavefront) touches at the same
// column then hit 8 different bank groups. kCols is a multiple of 64.
template <int kCols>
__device__ __forceinline__ uint32_t swz(int row, int col) {
  static_assert(kCols % 64 == 0, "swizzled tiles need at least 8 chunks per row");
  return static_cast<uint32_t>(row * kCols * 2 + (((col >> 3) ^ (row & 7)) << 4) + (col & 7) * 2);
}

// One lane's walk over a swizzled tile: the offset of (row + rows, col + 16 j)
// for rows a multiple of 8 and col < 16 is that of (row, col) with j XORed into
// the chunk bits, so each access pattern keeps a single offset in a register
// instead of one per column step.
template <int kCols>
struct SwzLane {
  uint32_t off;
  __device__ SwzLane(int row, int col) : off(swz<kCols>(row, col)) {}
  __device__ __forceinline__ uint32_t at(int rows, int j) const {
    return (off ^ static_cast<uint32_t>(j << 5)) + static_cast<uint32_t>(rows * kCols * 2);
  }
};

// Rows [row0, row0 + kRows) of a (T, kCols) strided view into a swizzled tile;
// rows at or past `rows` become zeros (so masked products stay finite).
template <int kRows, int kCols, int kThreads>
__device__ __forceinline__ void load_tile_async(uint32_t dst, const bf16* src, int64_t row_stride,
                                                int row0, int rows) {
  constexpr int kChunks = kCols / 8;  // 16-byte pieces per row
  static_assert(kRows * kChunks % kThreads == 0, "tile does not split evenly over the block");
#pragma unroll
  for (int i = 0; i < kRows * kChunks / kThreads; ++i) {
    const int idx = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    const bool valid = row0 + r < rows;
    const bf16* p = src + (valid ? static_cast<int64_t>(row0 + r) * row_stride : 0) + c;
    cp_async_16(dst + swz<kCols>(r, c), p, valid);
  }
}

// Per-lane ldmatrix row/column inside a 16x16 block. Fragments of mma.m16n8k16:
//  A (16x16) from a row-major tile [m][k]:          row kARow, column kACol.
//  B pair (two n8 tiles x k16) from a tile [n][k]:  row kBRow, column kBCol; regs
//     {0, 1} are the B fragment of n-rows 0-7, {2, 3} of n-rows 8-15. The same
//     addressing with .trans reads A from a transposed tile [k][m].
//  B pair from a tile [k][n] (.trans):              row kBtRow, column kBtCol.
struct LaneAddr {
  int a_row, a_col, b_row, b_col, bt_row, bt_col;
  __device__ explicit LaneAddr(int lane)
      : a_row(lane % 16),
        a_col((lane / 16) * 8),
        b_row((lane / 16) * 8 + lane % 8),
        b_col((lane / 8) % 2 * 8),
        bt_row((lane / 8) % 2 * 8 + lane % 8),
        bt_col((lane / 16) * 8) {}
};

// Shapes of one call.
struct FlashDims {
  int seq, heads, kv_heads, group;
  int grid_groups;        // grid_order.h: the 1-D grid's groups of sequence-heads
  int64_t q_row, kv_row;  // elements between consecutive positions: H*hd, Hkv*hd
  float scale, scale_log2;
};

// Where backward writes dQ, dK and dV: rows of q_row / kv_row elements per position (the
// tensors' own H*hd and Hkv*hd, or (H + 2 Hkv) * hd for both in the fused layer's packed
// qkv gradient). With `rope` set, RoPE is undone on dQ and dK as they are written (the
// rotation by -angle of ops/rope, in f32 before the one rounding): `rope` is the
// (positions, half) (cos, sin) table of rope_table_cuda, half = rotary_dim / 2 either
// hd / 2 or hd / 4 (so each rotary pair lies in one thread's fragment).
struct GradOut {
  bf16 *dq, *dk, *dv;
  int64_t q_row, kv_row;
  const float2* rope;
  int half;
  bool rope_per_row;  // positions (B, T): a table row per (b, t); (T): per t
};

// A thread's dK (times scale) and dV of one key row (sequence position bt = b * T + t, kv
// head g): columns 8 dt + quad_col + e hold dk_at(dt, e), dv_at(dt, e).
template <int kHd, class DK, class DV>
__device__ __forceinline__ void store_kv_row(const GradOut& o, int64_t bt, int t, int g,
                                             int quad_col, float scale, DK dk_at, DV dv_at) {
  constexpr int kDt = kHd / 8;
  float x[kDt][2];
#pragma unroll
  for (int dt = 0; dt < kDt; ++dt)
#pragma unroll
    for (int e = 0; e < 2; ++e) x[dt][e] = dk_at(dt, e) * scale;
  if (o.rope) {
    // Pairs (dt, dt + half / 8): the partner index is a constant of each branch, so x stays
    // in registers.
    const bool full = o.half == kHd / 2;
    const float2* cs = o.rope + (o.rope_per_row ? bt : t) * o.half;
#pragma unroll
    for (int dt = 0; dt < kDt / 2; ++dt) {
      if (!full && dt >= kDt / 4) break;
      const float4 a = *reinterpret_cast<const float4*>(cs + 8 * dt + quad_col);
      const float c[2] = {a.x, a.z}, sn[2] = {a.y, a.w};
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float lo = x[dt][e], hi = full ? x[dt + kDt / 2][e] : x[dt + kDt / 4][e];
        x[dt][e] = lo * c[e] + hi * sn[e];
        const float rotated = hi * c[e] - lo * sn[e];
        if (full)
          x[dt + kDt / 2][e] = rotated;
        else
          x[dt + kDt / 4][e] = rotated;
      }
    }
  }
  const int64_t off = bt * o.kv_row + g * kHd + quad_col;
#pragma unroll
  for (int dt = 0; dt < kDt; ++dt) {
    store_bf16x2(o.dk + off + dt * 8, pack_bf16(x[dt][0], x[dt][1]));
    store_bf16x2(o.dv + off + dt * 8, pack_bf16(dv_at(dt, 0), dv_at(dt, 1)));
  }
}

// This block's tile of `rows` positions (grid_order.h): the rank-th heaviest, `index` counted
// from the sequence's start: a forward query tile (the last is the heaviest) or, with
// kFromStart, a backward key tile (the first is); `head` of `heads` in sequence b.
// A persistent kernel names the tile by its place `block` in the walk of `blocks` tiles.
template <bool kFromStart>
struct BlockTile {
  int index, head, b;
  __device__ __forceinline__ BlockTile(const FlashDims& d, int rows, int heads)
      : BlockTile(d, rows, heads, blockIdx.x, gridDim.x) {}
  __device__ __forceinline__ BlockTile(const FlashDims& d, int rows, int heads, int block,
                                       int blocks) {
    const int tiles = (d.seq + rows - 1) / rows;
    const GridTile t = grid_tile(block, tiles, blocks / tiles, d.grid_groups);
    index = kFromStart ? t.rank : tiles - 1 - t.rank;
    head = t.seq_head % heads;
    b = t.seq_head / heads;
  }
};

// ---- forward ----

template <int kHeadDim_, int kWarps_, int kMTiles_, int kBlockN_>
struct FwdTraits {
  static constexpr int kHeadDim = kHeadDim_, kWarps = kWarps_, kMTiles = kMTiles_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kWarpRows = 16 * kMTiles;
  static constexpr int kBlockM = kWarps * kWarpRows;
  // Q fragments live in registers when they fit beside O and S, else they are
  // re-read from shared memory for every key tile.
  static constexpr bool kQInRegs = kMTiles * kHeadDim <= 128;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKVBytes = kBlockN * kHeadDim * 2;
  static constexpr int kSmemBytes = kQBytes + 4 * kKVBytes;  // Q, K[2], V[2]
  static_assert(kBlockN % 16 == 0);
};

// Grid (ceil(T / kBlockM), H, B), the diagonal-heavy (last) query blocks first.
template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    flash_attention_forward_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                   const bf16* __restrict__ v, bf16* __restrict__ out,
                                   float* __restrict__ lse, FlashDims d) {
  constexpr int kHd = Tr::kHeadDim, kBn = Tr::kBlockN, kBm = Tr::kBlockM, kMt = Tr::kMTiles;
  constexpr int kNt = kBn / 8;  // score n8 tiles per warp row block
  constexpr int kDt = kHd / 8;  // output n8 tiles
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t s_q = smem_addr(smem);
  const uint32_t s_k = s_q + Tr::kQBytes, s_v = s_k + 2 * Tr::kKVBytes;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int quad_row = lane / 4, quad_col = lane % 4 * 2;  // C fragment element (row, col)
  const LaneAddr la(lane);
  const SwzLane<kHd> q_lane(warp * Tr::kWarpRows + la.a_row, la.a_col);  // A from Q
  const SwzLane<kHd> k_lane(la.b_row, la.b_col);                         // B from K
  const SwzLane<kHd> v_lane(la.bt_row, la.bt_col);                       // B from V (.trans)
  const BlockTile<false> tile(d, kBm, d.heads);
  const int m_block = tile.index, h = tile.head, b = tile.b, g = h / d.group;
  const int m0 = m_block * kBm, warp_row0 = m0 + warp * Tr::kWarpRows;
  const int64_t q_off = static_cast<int64_t>(b) * d.seq * d.q_row + h * kHd;
  const int64_t kv_off = static_cast<int64_t>(b) * d.seq * d.kv_row + g * kHd;
  const int n_tiles = (min(m0 + kBm, d.seq) + kBn - 1) / kBn;  // key tiles up to the diagonal

  // One copy group per key tile: {Q, K0, V0}, then {K(n+1), V(n+1)} issued at
  // the top of iteration n, so a tile has a whole iteration to land and each
  // iteration needs a single barrier. (Splitting K and V into groups with a
  // barrier before P V measured 5-10% slower on an H100.)
  auto load_kv = [&](int n, int stage) {
    load_tile_async<kBn, kHd, Tr::kThreads>(s_k + stage * Tr::kKVBytes, k + kv_off, d.kv_row,
                                            n * kBn, d.seq);
    load_tile_async<kBn, kHd, Tr::kThreads>(s_v + stage * Tr::kKVBytes, v + kv_off, d.kv_row,
                                            n * kBn, d.seq);
  };
  load_tile_async<kBm, kHd, Tr::kThreads>(s_q, q + q_off, d.q_row, m0, d.seq);
  load_kv(0, 0);
  cp_async_commit();

  uint32_t q_frag[Tr::kQInRegs ? kMt : 1][Tr::kQInRegs ? kHd / 16 : 1][4];
  float o[kMt][kDt][4];
  float m_run[kMt][2], l_run[kMt][2];  // running max (raw score) and this lane's partial sum
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDt; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][dt][e] = 0.f;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      m_run[mt][hf] = -INFINITY;
      l_run[mt][hf] = 0.f;
    }
  }

  for (int n = 0; n < n_tiles; ++n) {
    const int stage = n & 1;
    const uint32_t s_kn = s_k + stage * Tr::kKVBytes, s_vn = s_v + stage * Tr::kKVBytes;
    cp_async_wait<0>();  // K(n), V(n) (and Q) landed
    __syncthreads();     // ... for every thread's copies; everyone is past tile n - 1
    if constexpr (Tr::kQInRegs) {
      if (n == 0) {
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
          for (int ks = 0; ks < kHd / 16; ++ks)
            ldmatrix_x4(q_frag[mt][ks], s_q + q_lane.at(mt * 16, ks));
      }
    }
    if (n + 1 < n_tiles) load_kv(n + 1, stage ^ 1);  // into the buffers tile n - 1 used
    cp_async_commit();

    // S = Q K^T: (kWarpRows, kBn) per warp.
    float s[kMt][kNt][4];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kHd / 16; ++ks) {
      uint32_t a[kMt][4];
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
        if constexpr (Tr::kQInRegs) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[mt][e] = q_frag[mt][ks][e];
        } else {
          ldmatrix_x4(a[mt], s_q + q_lane.at(mt * 16, ks));
        }
      }
#pragma unroll
      for (int np = 0; np < kNt / 2; ++np) {
        uint32_t bk[4];
        ldmatrix_x4(bk, s_kn + k_lane.at(np * 16, ks));
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          mma_bf16(s[mt][2 * np], a[mt], bk[0], bk[1]);
          mma_bf16(s[mt][2 * np + 1], a[mt], bk[2], bk[3]);
        }
      }
    }

    // Causal mask where this tile reaches past the warp's first row.
    if ((n + 1) * kBn - 1 > warp_row0) {
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int row = warp_row0 + mt * 16 + quad_row + (e >> 1) * 8;
            const int col = n * kBn + nt * 8 + quad_col + (e & 1);
            if (col > row) s[mt][nt][e] = -INFINITY;
          }
    }

    // Online softmax: the row max over the quad of lanes that shares a row.
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = m_run[mt][hf];
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt)
          mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hf], s[mt][nt][2 * hf + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 2));
        // A row with no visible key yet keeps max -inf: subtract 0 instead so
        // that exp2(-inf - -inf) never makes a NaN.
        const float m_scaled = mx == -INFINITY ? 0.f : mx * d.scale_log2;
        const float alpha = exp2_approx(m_run[mt][hf] * d.scale_log2 - m_scaled);
        m_run[mt][hf] = mx;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = exp2_approx(fmaf(s[mt][nt][2 * hf + e], d.scale_log2, -m_scaled));
            s[mt][nt][2 * hf + e] = p;
            sum += p;
          }
        l_run[mt][hf] = l_run[mt][hf] * alpha + sum;
#pragma unroll
        for (int dt = 0; dt < kDt; ++dt) {
          o[mt][dt][2 * hf] *= alpha;
          o[mt][dt][2 * hf + 1] *= alpha;
        }
      }
    }

    // P as bf16 A fragments: the C layout of n8 tiles 2kk, 2kk+1 is the A layout of k16 step kk.
    uint32_t p_frag[kMt][kBn / 16][4];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
      for (int kk = 0; kk < kBn / 16; ++kk) {
        p_frag[mt][kk][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        p_frag[mt][kk][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        p_frag[mt][kk][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        p_frag[mt][kk][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
    }

    // O += P V: V is [key][dim], so its B fragments come through ldmatrix.trans.
#pragma unroll
    for (int kk = 0; kk < kBn / 16; ++kk) {
#pragma unroll
      for (int dp = 0; dp < kHd / 16; ++dp) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, s_vn + v_lane.at(kk * 16, dp));
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          mma_bf16(o[mt][2 * dp], p_frag[mt][kk], bv[0], bv[1]);
          mma_bf16(o[mt][2 * dp + 1], p_frag[mt][kk], bv[2], bv[3]);
        }
      }
    }
  }

  // out = O / l; lse = log(l) + max * scale (natural log).
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float l = l_run[mt][hf];
      l += __shfl_xor_sync(kFullMask, l, 1);
      l += __shfl_xor_sync(kFullMask, l, 2);
      const int row = warp_row0 + mt * 16 + quad_row + hf * 8;
      if (row >= d.seq) continue;
      const float inv = 1.f / l;
      bf16* dst = out + q_off + static_cast<int64_t>(row) * d.q_row + quad_col;
#pragma unroll
      for (int dt = 0; dt < kDt; ++dt)
        store_bf16x2(dst + dt * 8, pack_bf16(o[mt][dt][2 * hf] * inv, o[mt][dt][2 * hf + 1] * inv));
      if (lane % 4 == 0)
        lse[(static_cast<int64_t>(b) * d.heads + h) * d.seq + row] =
            (m_run[mt][hf] * d.scale_log2 + log2f(l)) * kLn2;
    }
  }
}

// ---- backward ----

template <int kHeadDim_, int kWarps_, int kBlockM_>
struct BwdTraits {
  static constexpr bool kWarpSpecialized = false;
  static constexpr int kHeadDim = kHeadDim_, kWarps = kWarps_, kBlockM = kBlockM_;
  static constexpr int kBlockN = 16 * kWarps;  // each warp owns 16 keys
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKVBytes = kBlockN * kHeadDim * 2;
  static constexpr int kDsBytes = kBlockN * kBlockM * 2;
  static constexpr int kStatBytes = kBlockM * 4;
  // K, V, Q[2], dO[2], dS^T, lse[2], D[2]
  static constexpr int kSmemBytes = 2 * kKVBytes + 4 * kQBytes + kDsBytes + 4 * kStatBytes;
  // dQ (kBlockM, kHeadDim) splits into units of 16 rows x kDqCols columns, a
  // whole number per warp.
  static constexpr int kRowGroups = kBlockM / 16;
  static constexpr int kDqUnits64 = kRowGroups * (kHeadDim / 64);  // units of 64 columns
  static constexpr int kDqUnits = kDqUnits64 > kWarps ? kDqUnits64 : kWarps;
  static constexpr int kDqCols = kHeadDim * kRowGroups / kDqUnits;
  static_assert(kBlockM % 64 == 0 && kBlockM <= kThreads);
  static_assert(kDqUnits % kWarps == 0 && kDqCols % 16 == 0 && kHeadDim % kDqCols == 0);
};

// D[b, h, t] = sum_i dout[b, t, h, i] * out[b, t, h, i]: kHeadDim / 8 lanes per
// row, one 16-byte load each. The same lanes zero the f32 dQ accumulator (laid out
// like dout) that the backward kernel adds into: no separate fill pass.
template <int kHeadDim>
__global__ void flash_attention_delta_kernel(const bf16* __restrict__ dout,
                                             const bf16* __restrict__ out,
                                             float* __restrict__ delta, float* __restrict__ dq_acc,
                                             int64_t rows, int seq, int heads) {
  constexpr int kLanes = kHeadDim / 8;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kLanes;
  const int part = threadIdx.x % kLanes;
  float acc = 0.f;
  if (row < rows) {
    const uint4 a = *reinterpret_cast<const uint4*>(dout + row * kHeadDim + part * 8);
    const uint4 c = *reinterpret_cast<const uint4*>(out + row * kHeadDim + part * 8);
    float4* zero = reinterpret_cast<float4*>(dq_acc + row * kHeadDim + part * 8);
    zero[0] = zero[1] = make_float4(0.f, 0.f, 0.f, 0.f);
    const __nv_bfloat162* a2 = reinterpret_cast<const __nv_bfloat162*>(&a);
    const __nv_bfloat162* c2 = reinterpret_cast<const __nv_bfloat162*>(&c);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 x = __bfloat1622float2(a2[i]), y = __bfloat1622float2(c2[i]);
      acc += x.x * y.x + x.y * y.y;
    }
  }
#pragma unroll
  for (int o = kLanes / 2; o > 0; o /= 2) acc += __shfl_xor_sync(kFullMask, acc, o);
  if (row < rows && part == 0) {
    const int64_t bt = row / heads;  // rows are (b, t, h)
    const int h = static_cast<int>(row % heads), t = static_cast<int>(bt % seq);
    delta[(bt / seq * heads + h) * seq + t] = acc;
  }
}

// dq = bf16(acc * scale) from the f32 buffer (B, T, H, hd) into o.dq's rows, RoPE undone
// when o.rope. A thread takes four columns of one (position, head): a rotary item the
// four at i and the four at i + half, a pass-through item four at or past 2 half.
__global__ void flash_attention_dq_kernel(const float* __restrict__ acc, GradOut o, int64_t rows,
                                          int seq, int heads, int hd, float scale) {
  const int pairs = o.rope ? o.half / 4 : 0, items = pairs + (hd - 8 * pairs) / 4;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * items) return;
  const int64_t row = i / items;  // (b, t, h)
  const int item = static_cast<int>(i - row * items);
  const int64_t bt = row / heads;
  const int h = static_cast<int>(row - bt * heads);
  const int c0 = item < pairs ? 4 * item : 8 * pairs + 4 * (item - pairs);
  const float* src = acc + row * hd + c0;
  bf16* dst = o.dq + bt * o.q_row + h * hd + c0;
  const float4 a = *reinterpret_cast<const float4*>(src);
  float lo[4] = {a.x * scale, a.y * scale, a.z * scale, a.w * scale};
  if (item < pairs) {
    const float4 b = *reinterpret_cast<const float4*>(src + o.half);
    float hi[4] = {b.x * scale, b.y * scale, b.z * scale, b.w * scale};
    const float2* cs = o.rope + (o.rope_per_row ? bt : bt % seq) * o.half + c0;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 r = cs[e];
      const float x = lo[e], y = hi[e];
      lo[e] = x * r.x + y * r.y;
      hi[e] = y * r.x - x * r.y;
    }
    *reinterpret_cast<uint2*>(dst + o.half) =
        make_uint2(pack_bf16(hi[0], hi[1]), pack_bf16(hi[2], hi[3]));
  }
  *reinterpret_cast<uint2*>(dst) = make_uint2(pack_bf16(lo[0], lo[1]), pack_bf16(lo[2], lo[3]));
}

// Grid (ceil(T / kBlockN), Hkv, B); the first key blocks (the most query tiles) first.
template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    flash_attention_backward_kernel(const bf16* __restrict__ dout, const bf16* __restrict__ q,
                                    const bf16* __restrict__ k, const bf16* __restrict__ v,
                                    const float* __restrict__ lse, const float* __restrict__ delta,
                                    float* __restrict__ dq_acc, const GradOut o, FlashDims d) {
  constexpr int kHd = Tr::kHeadDim, kBn = Tr::kBlockN, kBm = Tr::kBlockM;
  constexpr int kQt = kBm / 8;  // query n8 tiles of S^T
  constexpr int kDt = kHd / 8;  // dK / dV n8 tiles
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t s_k = smem_addr(smem), s_v = s_k + Tr::kKVBytes;
  const uint32_t s_q = s_v + Tr::kKVBytes, s_do = s_q + 2 * Tr::kQBytes;
  const uint32_t s_ds = s_do + 2 * Tr::kQBytes;
  const uint32_t s_lse = s_ds + Tr::kDsBytes, s_delta = s_lse + 2 * Tr::kStatBytes;
  const float* lse_tiles = reinterpret_cast<const float*>(smem + (s_lse - s_k));
  const float* delta_tiles = reinterpret_cast<const float*>(smem + (s_delta - s_k));
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int quad_row = lane / 4, quad_col = lane % 4 * 2;
  const LaneAddr la(lane);
  const BlockTile<true> tile(d, kBn, d.kv_heads);
  const int g = tile.head, b = tile.b;
  const int n0 = tile.index * kBn, key_row0 = warp * 16;        // the warp's keys within the tile
  const SwzLane<kHd> kv_lane(key_row0 + la.a_row, la.a_col);    // A from K, V
  const SwzLane<kHd> qn_lane(la.b_row, la.b_col);               // B from Q, dO as [n][k]
  const SwzLane<kHd> qk_lane(la.bt_row, la.bt_col);             // B from Q, dO, K as [k][n]
  const SwzLane<kBm> ds_lane(la.b_row, la.b_col);               // A from dS^T (.trans)
  const SwzLane<kBm> ds_store0(key_row0 + quad_row, quad_col);  // dS^T from C fragments
  const SwzLane<kBm> ds_store8(key_row0 + quad_row, quad_col + 8);
  const int64_t kv_off = static_cast<int64_t>(b) * d.seq * d.kv_row + g * kHd;
  const int m_first = n0 / kBm, m_count = (d.seq + kBm - 1) / kBm - m_first;
  const int iters = d.group * m_count;  // (query head, query tile) pairs

  load_tile_async<kBn, kHd, Tr::kThreads>(s_k, k + kv_off, d.kv_row, n0, d.seq);
  load_tile_async<kBn, kHd, Tr::kThreads>(s_v, v + kv_off, d.kv_row, n0, d.seq);
  // Q, dO, lse and D of step `it` into stage `stage`; queries past T read zeros.
  auto issue = [&](int it, int stage) {
    const int h = g * d.group + it / m_count, m0 = (m_first + it % m_count) * kBm;
    const int64_t q_off = static_cast<int64_t>(b) * d.seq * d.q_row + h * kHd;
    load_tile_async<kBm, kHd, Tr::kThreads>(s_q + stage * Tr::kQBytes, q + q_off, d.q_row, m0,
                                            d.seq);
    load_tile_async<kBm, kHd, Tr::kThreads>(s_do + stage * Tr::kQBytes, dout + q_off, d.q_row, m0,
                                            d.seq);
    if (threadIdx.x < kBm) {
      const int t = m0 + threadIdx.x;
      const bool valid = t < d.seq;
      const int64_t stat = (static_cast<int64_t>(b) * d.heads + h) * d.seq + (valid ? t : 0);
      cp_async_4(s_lse + stage * Tr::kStatBytes + 4 * threadIdx.x, lse + stat, valid);
      cp_async_4(s_delta + stage * Tr::kStatBytes + 4 * threadIdx.x, delta + stat, valid);
    }
  };
  issue(0, 0);
  cp_async_commit();

  float dk_acc[kDt][4], dv_acc[kDt][4];
#pragma unroll
  for (int dt = 0; dt < kDt; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[dt][e] = dv_acc[dt][e] = 0.f;

  for (int it = 0; it < iters; ++it) {
    const int stage = it & 1;
    const int h = g * d.group + it / m_count, m0 = (m_first + it % m_count) * kBm;
    cp_async_wait<0>();  // step `it` (and K, V) landed
    __syncthreads();     // ... for every thread's copies; everyone is past step it - 1
    if (it + 1 < iters) issue(it + 1, stage ^ 1);
    cp_async_commit();
    const uint32_t s_qs = s_q + stage * Tr::kQBytes, s_dos = s_do + stage * Tr::kQBytes;
    const float* lse_s = lse_tiles + stage * kBm;
    const float* delta_s = delta_tiles + stage * kBm;

    // S^T = K Q^T and dP^T = V dO^T for the warp's 16 keys: (16, kBm) each.
    float st[kQt][4], dpt[kQt][4];
#pragma unroll
    for (int nt = 0; nt < kQt; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kHd / 16; ++ks) {
      uint32_t ak[4], av[4];
      ldmatrix_x4(ak, s_k + kv_lane.at(0, ks));
      ldmatrix_x4(av, s_v + kv_lane.at(0, ks));
#pragma unroll
      for (int np = 0; np < kQt / 2; ++np) {
        uint32_t bq[4], bdo[4];
        ldmatrix_x4(bq, s_qs + qn_lane.at(np * 16, ks));
        ldmatrix_x4(bdo, s_dos + qn_lane.at(np * 16, ks));
        mma_bf16(st[2 * np], ak, bq[0], bq[1]);
        mma_bf16(st[2 * np + 1], ak, bq[2], bq[3]);
        mma_bf16(dpt[2 * np], av, bdo[0], bdo[1]);
        mma_bf16(dpt[2 * np + 1], av, bdo[2], bdo[3]);
      }
    }

    // P^T = exp(S^T * scale - lse); dS^T = P^T (dP^T - D). Zero above the
    // diagonal and for queries past T (their lse and D were read as zeros).
    const bool need_mask = n0 + kBn - 1 > m0 || m0 + kBm > d.seq;
#pragma unroll
    for (int nt = 0; nt < kQt; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + quad_col + (e & 1);  // query within the tile
        float p = exp2_approx(fmaf(st[nt][e], d.scale_log2, -lse_s[col] * kLog2e));
        if (need_mask) {
          const int key = n0 + key_row0 + quad_row + (e >> 1) * 8, query = m0 + col;
          if (key > query || query >= d.seq) p = 0.f;
        }
        st[nt][e] = p;
        dpt[nt][e] = p * (dpt[nt][e] - delta_s[col]);
      }
    uint32_t p_frag[kBm / 16][4], ds_frag[kBm / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBm / 16; ++kk) {
      p_frag[kk][0] = pack_bf16(st[2 * kk][0], st[2 * kk][1]);
      p_frag[kk][1] = pack_bf16(st[2 * kk][2], st[2 * kk][3]);
      p_frag[kk][2] = pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]);
      p_frag[kk][3] = pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3]);
      ds_frag[kk][0] = pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]);
      ds_frag[kk][1] = pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]);
      ds_frag[kk][2] = pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
      ds_frag[kk][3] = pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
    }

    // dV += P^T dO and dK += dS^T Q: (16, kBm) x (kBm, kHd); dO and Q are [query][dim].
#pragma unroll
    for (int kk = 0; kk < kBm / 16; ++kk) {
#pragma unroll
      for (int dp = 0; dp < kHd / 16; ++dp) {
        uint32_t bdo[4], bq[4];
        ldmatrix_x4_trans(bdo, s_dos + qk_lane.at(kk * 16, dp));
        ldmatrix_x4_trans(bq, s_qs + qk_lane.at(kk * 16, dp));
        mma_bf16(dv_acc[2 * dp], p_frag[kk], bdo[0], bdo[1]);
        mma_bf16(dv_acc[2 * dp + 1], p_frag[kk], bdo[2], bdo[3]);
        mma_bf16(dk_acc[2 * dp], ds_frag[kk], bq[0], bq[1]);
        mma_bf16(dk_acc[2 * dp + 1], ds_frag[kk], bq[2], bq[3]);
      }
    }

    // dS^T (kBn, kBm) to shared memory: dQ sums over every warp's keys.
#pragma unroll
    for (int kk = 0; kk < kBm / 16; ++kk) {
      st_shared_u32(s_ds + ds_store0.at(0, kk), ds_frag[kk][0]);
      st_shared_u32(s_ds + ds_store0.at(8, kk), ds_frag[kk][1]);
      st_shared_u32(s_ds + ds_store8.at(0, kk), ds_frag[kk][2]);
      st_shared_u32(s_ds + ds_store8.at(8, kk), ds_frag[kk][3]);
    }
    __syncthreads();

    // dQ (kBm, kHd) += dS (kBm, kBn) K (kBn, kHd), added into the f32 buffer.
    // dS comes from the transposed tile (ldmatrix.trans), K is [key][dim].
    for (int u = warp; u < Tr::kDqUnits; u += Tr::kWarps) {
      const int rg = u % Tr::kRowGroups, c0 = u / Tr::kRowGroups * Tr::kDqCols;
      float acc[Tr::kDqCols / 8][4];
#pragma unroll
      for (int nt = 0; nt < Tr::kDqCols / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kBn / 16; ++kk) {
        uint32_t a[4];
        ldmatrix_x4_trans(a, s_ds + ds_lane.at(kk * 16, rg));
#pragma unroll
        for (int dp = 0; dp < Tr::kDqCols / 16; ++dp) {
          uint32_t bk[4];
          ldmatrix_x4_trans(bk, s_k + qk_lane.at(kk * 16, c0 / 16 + dp));
          mma_bf16(acc[2 * dp], a, bk[0], bk[1]);
          mma_bf16(acc[2 * dp + 1], a, bk[2], bk[3]);
        }
      }
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int row = m0 + rg * 16 + quad_row + hf * 8;
        if (row >= d.seq) continue;
        float* dst =
            dq_acc + (static_cast<int64_t>(b) * d.seq + row) * d.q_row + h * kHd + c0 + quad_col;
#pragma unroll
        for (int nt = 0; nt < Tr::kDqCols / 8; ++nt)
          atomicAdd(reinterpret_cast<float2*>(dst + nt * 8),
                    make_float2(acc[nt][2 * hf], acc[nt][2 * hf + 1]));
      }
    }
  }

  // dK = scale * sum dS^T Q, dV = sum P^T dO over the group's heads.
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int key = n0 + key_row0 + quad_row + hf * 8;
    if (key >= d.seq) continue;
    store_kv_row<kHd>(
        o, static_cast<int64_t>(b) * d.seq + key, key, g, quad_col, d.scale,
        [&](int dt, int e) { return dk_acc[dt][2 * hf + e]; },
        [&](int dt, int e) { return dv_acc[dt][2 * hf + e]; });
  }
}

// ---- forward on Hopper (sm_90a): warpgroup MMAs ----
//
// The same walk with the products on wgmma: a block of two warpgroups owns 128
// query rows of one (b, h), 64 per warpgroup (a warp 16 of them, as above). Q,
// and K and V tiles of kBlockN keys (double-buffered, cp.async), sit in shared
// memory in the layout wgmma reads with 128-byte swizzling: column chunks of 64
// elements, each a stack of 128-byte rows in 1024-byte atoms of 8 rows, the
// 16-byte piece j of row r stored at piece j ^ (r % 8). S = Q K^T takes A (Q)
// and B (K) from there, K-major; O += P V takes A (P) from registers, since the
// accumulator layout of S is the A-fragment layout of P, and B (V, [key][dim])
// from there, N-major. The softmax is the one above, on the same fragments.

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // the helpers only the sm_90a kernel body uses

// Rows [row0, row0 + kRows) of a (T, kHd) strided view into a wgmma tile (see
// above); rows at or past `rows` become zeros.
template <int kRows, int kHd, int kThreads>
__device__ __forceinline__ void load_wgmma_tile_async(uint32_t dst, const bf16* src,
                                                      int64_t row_stride, int row0, int rows) {
  constexpr int kPieces = kHd / 8;  // 16-byte pieces per row
  static_assert(kRows * kPieces % kThreads == 0, "tile does not split evenly over the block");
#pragma unroll
  for (int i = 0; i < kRows * kPieces / kThreads; ++i) {
    const int idx = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = idx / kPieces, j = idx % kPieces;
    const bool valid = row0 + r < rows;
    const bf16* p = src + (valid ? static_cast<int64_t>(row0 + r) * row_stride : 0) + j * 8;
    cp_async_16(dst + (j / 8) * (kRows * 128) + r * 128 + (((j % 8) ^ (r & 7)) << 4), p, valid);
  }
}

// A wgmma shared-memory matrix descriptor with 128-byte swizzling. K-major: rows
// 128 bytes apart, `stride` (1024) between 8-row atoms, `leading` unused (16).
// N-major: `leading` between 64-column chunks, `stride` (1024) between 8-row atoms.
__device__ __forceinline__ uint64_t wgmma_desc(uint32_t addr, uint32_t leading, uint32_t stride) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((leading & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((stride & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

// The accumulators an asynchronous wgmma wrote are read only after it is done:
// these empty statements keep the compiler from moving their uses above the wait.
template <int N>
__device__ __forceinline__ void pin(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// The accumulator register strings of a wgmma: %0-%31 (and, for n128, %32-%63),
// the operands FG_WGMMA_ACC32 (core/wgmma.cuh). Macros, since an asm string
// cannot be built by a function.
#define FG_WGMMA_REGS_0_31 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define FG_WGMMA_REGS_32_63 \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

// D (64 x 64, fp32) += A (64 x 16 bf16, registers) B (16 x 64, shared memory, N-major).
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const uint32_t (&a)[4],
                                              uint64_t desc_b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" FG_WGMMA_REGS_0_31
               "}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
               : FG_WGMMA_ACC32(d)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

// D (64 x 128, fp32) += A (64 x 16 bf16, registers) B (16 x 128, shared memory, N-major).
__device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const uint32_t (&a)[4],
                                              uint64_t desc_b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" FG_WGMMA_REGS_0_31
               ", " FG_WGMMA_REGS_32_63 "}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
               : FG_WGMMA_ACC32(d), FG_WGMMA_ACC32(d + 32)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

// D (64 x 64, fp32) += A (64 x 16) B (16 x 64), both from shared memory; kMajorA/B: 0 for
// K-major, 1 for M-major A / N-major B (the transposed forms).
template <int kMajorA, int kMajorB>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t desc_a, uint64_t desc_b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" FG_WGMMA_REGS_0_31
               "}, %32, %33, 1, 1, 1, %34, %35;\n"
               : FG_WGMMA_ACC32(d)
               : "l"(desc_a), "l"(desc_b), "n"(kMajorA), "n"(kMajorB));
}

// D (64 x 32, fp32) += A (64 x 16) B (16 x 32), both from shared memory; majors as above.
template <int kMajorA, int kMajorB>
__device__ __forceinline__ void wgmma_ss_n32(float (&d)[16], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "%16, %17, 1, 1, 1, %18, %19;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "l"(desc_a), "l"(desc_b), "n"(kMajorA), "n"(kMajorB));
}

// D (64 x 128, fp32) += A (64 x 16) B (16 x 128), both from shared memory; majors as above.
template <int kMajorA, int kMajorB>
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" FG_WGMMA_REGS_0_31
               ", " FG_WGMMA_REGS_32_63 "}, %64, %65, 1, 1, 1, %66, %67;\n"
               : FG_WGMMA_ACC32(d), FG_WGMMA_ACC32(d + 32)
               : "l"(desc_a), "l"(desc_b), "n"(kMajorA), "n"(kMajorB));
}
#undef FG_WGMMA_REGS_0_31
#undef FG_WGMMA_REGS_32_63

template <int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4],
                                         uint64_t desc_b) {
  if constexpr (N == 64) wgmma_rs_n64(d, a, desc_b);
  else wgmma_rs_n128(d, a, desc_b);
}
template <int N, int kMajorA, int kMajorB>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b) {
  if constexpr (N == 32)
    wgmma_ss_n32<kMajorA, kMajorB>(d, desc_a, desc_b);
  else if constexpr (N == 64)
    wgmma_ss_n64<kMajorA, kMajorB>(d, desc_a, desc_b);
  else wgmma_ss_n128<kMajorA, kMajorB>(d, desc_a, desc_b);
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// ---- forward on Hopper, warp-specialized (FlashAttention-3's schedule) ----
//
// Three warpgroups. The producer's one elected thread loads a tile's Q and its K, V key tile
// by key tile by TMA (128-byte swizzle, the layout load_wgmma_tile_async writes) into a ring
// of kStages, each tile completing on a "full" mbarrier and freed by the consumers on an
// "empty" one; K and V have barriers of their own, so S = Q K^T starts before V lands. Two
// consumers own 64 query rows each. Per key tile a consumer issues S(n) = Q K(n)^T and
// O += P(n-1) V(n-1) together, then runs the softmax of S(n) under the P V product; the two
// take turns issuing (named barriers), so one's softmax also runs under the other's
// products. The key tiles are walked from the diagonal down: only the first needs the mask.
// The grid is persistent (one block per SM): a block's first query tile is its index, each
// next one comes from a counter (atomicAdd) in grid_order.h's walk, and Q is double-buffered,
// so the next tile's Q and first keys land under this one's last products; a tile's last
// P V goes out with the next tile's first S, which runs under this tile's stores. At T =
// 1024 a tile walks at most 8 key tiles: a block per tile left its loads and stores exposed.

// Registers per thread a block of 384 threads is launched with (65536 / 384, rounded down to
// a multiple of 8). setmaxnreg moves registers between the block's warpgroups, never beyond
// this total: a consumer's .inc past it waits forever (a hang, measured).
constexpr int kLaunchRegs = 168;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Rows [row0, row0 + kRows) of sequence b of a (B, T, row) operand's TMA map (attention_map),
// columns [col0, col0 + kHd), into the wgmma tile at dst (64-column chunks kRows * 128 bytes
// apart, as load_wgmma_tile_async writes them), counted on `full` with all its bytes.
template <int kRows, int kHd>
__device__ __forceinline__ void tma_load_tile(uint32_t dst, const CUtensorMap* map, uint64_t* full,
                                              int col0, int row0, int b) {
  hopper::mbar_expect_tx(full, kRows * kHd * 2);
#pragma unroll
  for (int c = 0; c < kHd / 64; ++c)
    hopper::tma_load_3d(dst + c * kRows * 128, map, full, col0 + c * 64, row0, b);
}
#endif

template <int kHeadDim_>
struct HopperWsFwdTraits {
  static constexpr int kHeadDim = kHeadDim_;
  // Four K, V stages where shared memory holds them (hd 64: 160 KB with Q's two buffers; at
  // T = 1024 three gave +7-10 % over two, four +2 % more), two at hd 128 (192 KB).
  static constexpr int kBlockM = 128, kBlockN = 128, kStages = kHeadDim == 64 ? 4 : 2;
  static constexpr int kThreads = 384;  // producer + two consumers of 64 rows
  static constexpr int kProducerRegs = 40, kConsumerRegs = 232;
  static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= kLaunchRegs * 384,
                "setmaxnreg.inc would wait for registers the block does not have");
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;  // per Q buffer (two)
  static constexpr int kKVBytes = kBlockN * kHeadDim * 2;
  static constexpr int kBarrierOffset = 2 * kQBytes + 2 * kStages * kKVBytes;
  static constexpr int kBarriers = 4 + 4 * kStages;  // Q full, empty; K, V full, empty per stage
  static constexpr int kSmemBytes = kBarrierOffset + kBarriers * 8 + 2 * 4 + 1024;  // + tiles
  static_assert(kBlockM == kBlockN, "a block's key tiles end at its own diagonal tile");
};

// Synchronization, every wait with the arrivals that end it:
// - full_q[j], full_k[s], full_v[s] (count 1 + bytes): the producer's arrive.expect_tx and
//   the copy engine's bytes (full_q[j] with no bytes after the walk's end); consumers wait
//   at the load's parity. Q buffer j holds the block's tiles 2u + j, u = 0, 1, ...; the
//   ring's stages count key tiles over all of the block's query tiles.
// - empty_q[j], empty_k[s], empty_v[s] (count 8): one arrival per consumer warp once the
//   wgmma that read the buffer retired; the producer waits at the opposite parity first.
// - Turns, named barriers 1 (consumer 0 may issue) and 2 (consumer 1), 256 threads each: the
//   waiting consumer's bar.sync + the other's bar.arrive. Both walk the same issue steps
//   (per query tile its S products, the last P V sharing a step with the next tile's first
//   S); consumer 1 opens the block's walk with an arrival on turn 0 and skips its very last
//   one, so every arrival is waited for.
// The grid: at most one block per SM over `blocks` tiles in grid_order.h's walk; tile_counter
// (0 at launch) hands out tiles gridDim.x, gridDim.x + 1, ...
template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    flash_attention_forward_ws_kernel(const __grid_constant__ CUtensorMap q_map,
                                      const __grid_constant__ CUtensorMap k_map,
                                      const __grid_constant__ CUtensorMap v_map,
                                      bf16* __restrict__ out, float* __restrict__ lse,
                                      int* __restrict__ tile_counter, int blocks, FlashDims d) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kHd = Tr::kHeadDim, kBn = Tr::kBlockN, kBm = Tr::kBlockM;
  constexpr int kStages = Tr::kStages;
  constexpr int kNt = kBn / 8, kDt = kHd / 8;  // score and output n8 tiles
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t s_q = (smem_addr(smem) + 1023) & ~1023u;  // swizzle atoms start at 1024
  const uint32_t s_k = s_q + 2 * Tr::kQBytes, s_v = s_k + kStages * Tr::kKVBytes;
  uint64_t* full_q =
      reinterpret_cast<uint64_t*>(smem + (s_q - smem_addr(smem)) + Tr::kBarrierOffset);
  uint64_t* empty_q = full_q + 2;
  uint64_t* full_k = empty_q + 2;
  uint64_t* full_v = full_k + kStages;
  uint64_t* empty_k = full_v + kStages;
  uint64_t* empty_v = empty_k + kStages;
  volatile int* tile_of = reinterpret_cast<volatile int*>(empty_v + kStages);  // per Q buffer

  if (threadIdx.x == 0) {
    for (int j = 0; j < 2; ++j) {
      hopper::mbar_init(&full_q[j], 1);
      hopper::mbar_init(&empty_q[j], 8);
    }
    for (int s = 0; s < kStages; ++s) {
      hopper::mbar_init(&full_k[s], 1);
      hopper::mbar_init(&full_v[s], 1);
      hopper::mbar_init(&empty_k[s], 8);
      hopper::mbar_init(&empty_v[s], 8);
    }
    hopper::fence_mbar_init();
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(Tr::kProducerRegs));
    if (threadIdx.x == 0) {
      int kv = 0;  // key tiles loaded so far
      for (int u = 0, block = blockIdx.x;; ++u) {
        const int j = u & 1;
        hopper::mbar_wait(&empty_q[j], ((u >> 1) & 1) ^ 1);
        tile_of[j] = block;
        if (block >= blocks) {
          hopper::mbar_arrive(&full_q[j]);  // the end: no tile, no bytes
          break;
        }
        const BlockTile<false> tile(d, kBm, d.heads, block, blocks);
        const int n_tiles = tile.index + 1, g = tile.head / d.group;
        tma_load_tile<kBm, kHd>(s_q + j * Tr::kQBytes, &q_map, &full_q[j], tile.head * kHd,
                                tile.index * kBm, tile.b);
        for (int i = 0; i < n_tiles; ++i, ++kv) {
          const int n = n_tiles - 1 - i, stage = kv % kStages;
          const uint32_t parity = (kv / kStages) & 1, off = stage * Tr::kKVBytes;
          hopper::mbar_wait(&empty_k[stage], parity ^ 1);
          tma_load_tile<kBn, kHd>(s_k + off, &k_map, &full_k[stage], g * kHd, n * kBn, tile.b);
          hopper::mbar_wait(&empty_v[stage], parity ^ 1);
          tma_load_tile<kBn, kHd>(s_v + off, &v_map, &full_v[stage], g * kHd, n * kBn, tile.b);
        }
        block = gridDim.x + atomicAdd(tile_counter, 1);
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(Tr::kConsumerRegs));
  const int cw = wg - 1, warp = threadIdx.x / kWarpSize % 4, lane = threadIdx.x % 32;
  const int quad_row = lane / 4, quad_col = lane % 4 * 2;  // accumulator element (row, col)
  auto take_turn = [&] { hopper::named_sync(1 + cw, 256); };
  auto pass_turn = [&] { hopper::named_arrive(2 - cw, 256); };

  float o[kHd / 2], s[kBn / 2];  // n8 tile t, element e at [4 t + e]
  float m_run[2], l_run[2];
  uint32_t p[kBn / 16][4];  // P of the last key tile, as bf16 A fragments
  uint32_t s_qj = s_q;      // this tile's Q buffer

  // S's zeros go before the fence that opens the issue step (not between its products:
  // ptxas would serialize them), so they are written apart from the products.
  auto zero_s = [&] {
#pragma unroll
    for (int i = 0; i < kBn / 2; ++i) s[i] = 0.f;
    pin(s);  // the zeros are written before the fence, not sunk past it
  };
  auto issue_s = [&](int stage) {  // S = Q K^T: (64, kBn) per consumer
    const uint32_t k_tile = s_k + stage * Tr::kKVBytes;
#pragma unroll
    for (int ks = 0; ks < kHd / 16; ++ks) {
      const uint32_t chunk = (ks / 4) * 128, col = (ks % 4) * 32;  // 64-column chunk, k16 step
      wgmma_ss_n128<0, 0>(s, wgmma_desc(s_qj + chunk * kBm + cw * 64 * 128 + col, 16, 1024),
                          wgmma_desc(k_tile + chunk * kBn + col, 16, 1024));
    }
    wgmma_commit();
  };
  auto issue_pv = [&](int stage) {  // O += P V; V's k16 step kk is 16 key rows, 2048 bytes on
    const uint32_t v_tile = s_v + stage * Tr::kKVBytes;
#pragma unroll
    for (int kk = 0; kk < kBn / 16; ++kk)
      wgmma_rs<kHd>(o, p[kk], wgmma_desc(v_tile + kk * 2048, kBn * 128, 1024));
    wgmma_commit();
  };
  // The online softmax of s (in place, to unnormalized P in fp32); alpha rescales O.
  auto softmax = [&](float(&alpha)[2]) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float mx = m_run[hf];
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt)
        mx = fmaxf(mx, fmaxf(s[4 * nt + 2 * hf], s[4 * nt + 2 * hf + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 2));
      const float m_scaled = mx == -INFINITY ? 0.f : mx * d.scale_log2;
      alpha[hf] = exp2_approx(m_run[hf] * d.scale_log2 - m_scaled);
      m_run[hf] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pv = exp2_approx(fmaf(s[4 * nt + 2 * hf + e], d.scale_log2, -m_scaled));
          s[4 * nt + 2 * hf + e] = pv;
          sum += pv;
        }
      l_run[hf] = l_run[hf] * alpha[hf] + sum;
    }
  };
  // P as bf16 A fragments: n8 tiles 2kk, 2kk+1 of S are k16 step kk of P.
  auto make_p = [&] {
#pragma unroll
    for (int kk = 0; kk < kBn / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) p[kk][r] = pack_bf16(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
  };

  // The block's query tiles, the u-th in Q buffer u % 2; false after the last.
  struct Tile {
    int h, b, m0, n_tiles, warp_row0, j;
  };
  auto next_tile = [&](int u, Tile& t) {
    t.j = u & 1;
    hopper::mbar_wait(&full_q[t.j], (u >> 1) & 1);
    const int block = tile_of[t.j];
    if (block >= blocks) return false;
    const BlockTile<false> bt(d, kBm, d.heads, block, blocks);
    t.h = bt.head;
    t.b = bt.b;
    t.m0 = bt.index * kBm;
    t.n_tiles = bt.index + 1;  // key tiles up to and including the diagonal one
    t.warp_row0 = t.m0 + cw * 64 + warp * 16;
    return true;
  };
  // A tile's first (diagonal) S has retired: free its K, mask it, start O, m and l.
  auto first_softmax = [&](const Tile& t, int stage) {
    pin(s);
    hopper::mbar_arrive_warp(&empty_k[stage]);  // after the wait that retired its reads
    const int n = t.n_tiles - 1;
    if ((n + 1) * kBn - 1 > t.warp_row0) {
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = t.warp_row0 + quad_row + (e >> 1) * 8;
          const int col = n * kBn + nt * 8 + quad_col + (e & 1);
          if (col > row) s[4 * nt + e] = -INFINITY;
        }
    }
#pragma unroll
    for (int i = 0; i < kHd / 2; ++i) o[i] = 0.f;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      m_run[hf] = -INFINITY;
      l_run[hf] = 0.f;
    }
    float alpha[2];
    softmax(alpha);  // O is zero: nothing to rescale
    make_p();
  };
  // out = O / l; lse = log(l) + max * scale (natural log).
  auto store_out = [&](const Tile& t) {
    const int64_t q_off = static_cast<int64_t>(t.b) * d.seq * d.q_row + t.h * kHd;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float l = l_run[hf];
      l += __shfl_xor_sync(kFullMask, l, 1);
      l += __shfl_xor_sync(kFullMask, l, 2);
      const int row = t.warp_row0 + quad_row + hf * 8;
      if (row >= d.seq) continue;
      const float inv = 1.f / l;
      bf16* dst = out + q_off + static_cast<int64_t>(row) * d.q_row + quad_col;
#pragma unroll
      for (int dt = 0; dt < kDt; ++dt)
        store_bf16x2(dst + dt * 8,
                     pack_bf16(o[4 * dt + 2 * hf] * inv, o[4 * dt + 2 * hf + 1] * inv));
      if (lane % 4 == 0)
        lse[(static_cast<int64_t>(t.b) * d.heads + t.h) * d.seq + row] =
            (m_run[hf] * d.scale_log2 + log2f(l)) * kLn2;
    }
  };

  // The issue steps run on across tiles: a tile's last P V goes out with the next tile's
  // first S, so that S runs under this tile's stores. Every block has a first tile (the
  // grid is at most the tile count).
  Tile cur;
  next_tile(0, cur);
  int kv = 0, last = 0;      // key tiles consumed before cur; cur's last one
  if (cw == 1) pass_turn();  // consumer 0 issues first
  {
    const int stage = kv % kStages;
    hopper::mbar_wait(&full_k[stage], (kv / kStages) & 1);
    s_qj = s_q + cur.j * Tr::kQBytes;
    take_turn();
    zero_s();
    wgmma_fence();
    issue_s(stage);
    pass_turn();
    wgmma_wait<0>();
    first_softmax(cur, stage);
  }
  for (int u = 1;; ++u) {
    for (int i = 1; i < cur.n_tiles; ++i) {
      const int at = kv + i, stage = at % kStages, prev = (at - 1) % kStages;
      hopper::mbar_wait(&full_k[stage], (at / kStages) & 1);
      hopper::mbar_wait(&full_v[prev], ((at - 1) / kStages) & 1);
      take_turn();
      zero_s();
      wgmma_fence();
      issue_s(stage);
      issue_pv(prev);
      pass_turn();
      wgmma_wait<1>();  // S(n) is done; P(n-1) V(n-1) may still run
      pin(s);
      hopper::mbar_arrive_warp(&empty_k[stage]);
      float alpha[2];
      softmax(alpha);
      wgmma_wait<0>();
      pin(o);
      hopper::mbar_arrive_warp(&empty_v[prev]);
#pragma unroll
      for (int dt = 0; dt < kDt; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[4 * dt + e] *= alpha[e >> 1];
      make_p();
    }
    hopper::mbar_arrive_warp(&empty_q[cur.j]);  // every S product has retired: Q is free

    // The last P V, and the next tile's diagonal S beside it.
    last = kv + cur.n_tiles - 1;
    kv += cur.n_tiles;
    Tile nxt;
    if (!next_tile(u, nxt)) break;
    const int last_stage = last % kStages, stage = kv % kStages;
    hopper::mbar_wait(&full_v[last_stage], (last / kStages) & 1);
    hopper::mbar_wait(&full_k[stage], (kv / kStages) & 1);
    take_turn();
    zero_s();
    wgmma_fence();
    issue_pv(last_stage);
    s_qj = s_q + nxt.j * Tr::kQBytes;
    issue_s(stage);
    pass_turn();
    wgmma_wait<1>();  // O is done; the next S may still run
    pin(o);
    hopper::mbar_arrive_warp(&empty_v[last_stage]);
    store_out(cur);
    cur = nxt;
    wgmma_wait<0>();
    first_softmax(cur, stage);
  }
  {  // the block's last tile: its last P V alone
    const int last_stage = last % kStages;
    hopper::mbar_wait(&full_v[last_stage], (last / kStages) & 1);
    take_turn();
    wgmma_fence();
    issue_pv(last_stage);
    if (cw == 0) pass_turn();  // consumer 1's very last turn is passed to no one
    wgmma_wait<0>();
    pin(o);
    hopper::mbar_arrive_warp(&empty_v[last_stage]);
    store_out(cur);
  }
#else
  __trap();  // not an sm_90a build: cuda::sm90a_kernels_run() keeps callers away
#endif
}

// ---- backward on Hopper, warp-specialized ----
//
// A block owns 128 keys of one kv head and walks the query tiles (64 rows) at or after its
// diagonal, for every query head of the group, so dK and dV are summed in registers. The
// producer warpgroup's first warp loads K and V once, then per query tile Q and dO by TMA and
// lse and D by cp.async into a ring of kStages ("full" when all landed, "empty" when both
// consumers are done); its second warp adds each tile's dQ into the f32 buffer by TMA
// reductions. Two consumer warpgroups own 64 keys each: S^T = K Q^T and dP^T = V dO^T (both
// operands from shared memory); P^T and dS^T in registers as the A operands of dV += P^T dO
// and dK += dS^T Q; dS^T to shared memory (double-buffered, so a consumer may run a tile
// ahead). dQ = dS K over all 128 keys needs both consumers' dS^T rows. At hd 128, after one
// 256-thread barrier, consumer c computes dQ's column half c and stages it for the
// reduction. At hd 64 the tile's whole dQ is one consumer's (even tiles consumer 0's, odd
// ones consumer 1's), which waits on an mbarrier for the other's dS^T rows while the other
// goes on to its next tile: no barrier holds the two in step, so one's softmax can run
// under the other's products (hd 128's consumers have no registers for a whole dQ tile).
// No atomics; the copy engine adds whole boxes (at hd 128, T = 4096: 428 TFLOP/s against
// 378 with float4 atomics from the consumers, bench/RESULTS.md).

template <int kHeadDim_>
struct HopperWsBwdTraits {
  static constexpr bool kWarpSpecialized = true;
  // Q / dO stages: at hd 64 a third lets one consumer run a tile ahead of the other without
  // holding the producer back (bench_attention: +1 % over two); hd 128 has shared memory
  // for two.
  static constexpr int kHeadDim = kHeadDim_, kStages = kHeadDim == 64 ? 3 : 2;
  static constexpr int kThreads = 384, kBlockN = 128, kBlockM = 64;  // producer + 2 consumers
  // Below 40 registers the producer spills.
  static constexpr int kProducerRegs = 40, kConsumerRegs = 232;
  static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= kLaunchRegs * 384,
                "setmaxnreg.inc would wait for registers the block does not have");
  static constexpr int kKVBytes = kBlockN * kHeadDim * 2;  // K, V
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;   // Q, dO (per stage each)
  static constexpr int kDsBytes = kBlockN * kBlockM * 2;   // dS^T (two buffers)
  static constexpr int kStatBytes = kBlockM * 4;           // lse, D (per stage each)
  static constexpr bool kDqWhole = kHeadDim == 64;         // a tile's dQ one consumer's (above)
  static constexpr int kDqCols = kDqWhole ? kHeadDim : kHeadDim / 2;  // per consumer
  static constexpr int kDqBytes = kBlockM * kDqCols * 4;              // f32, per consumer
  static constexpr int kDqOffset =  // 1024-aligned: the boxes' 128-byte swizzle
      (2 * kKVBytes + 2 * kStages * kQBytes + 2 * kDsBytes + 2 * kStages * kStatBytes + 1023) /
      1024 * 1024;
  static constexpr int kBarrierOffset = kDqOffset + 2 * kDqBytes;
  static constexpr int kSmemBytes = kBarrierOffset + (9 + 2 * kStages) * 8 + 1024;  // + align
  // A query tile's stage is full after the producer thread's two arrive.expect_tx (Q, dO)
  // and its warp's 32 cp.async arrivals (lse, D).
  static constexpr int kFullArrivals = 2 + 32;
};

// Grid (ceil(T / 128), Hkv, B); the first key blocks (the most query tiles) first.
template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1) flash_attention_backward_ws_kernel(
    const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap k_map,
    const __grid_constant__ CUtensorMap v_map, const __grid_constant__ CUtensorMap dout_map,
    const __grid_constant__ CUtensorMap dq_map, const float* __restrict__ lse,
    const float* __restrict__ delta, float* __restrict__ dq_acc, const GradOut o, FlashDims d) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kHd = Tr::kHeadDim, kBn = Tr::kBlockN, kBm = Tr::kBlockM;
  constexpr int kStages = Tr::kStages;
  constexpr int kQt = kBm / 8;  // query n8 tiles of S^T
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t s_k = (smem_addr(smem) + 1023) & ~1023u;
  const uint32_t s_v = s_k + Tr::kKVBytes, s_q = s_v + Tr::kKVBytes;
  const uint32_t s_do = s_q + kStages * Tr::kQBytes, s_ds = s_do + kStages * Tr::kQBytes;
  const uint32_t s_lse = s_ds + 2 * Tr::kDsBytes, s_delta = s_lse + kStages * Tr::kStatBytes;
  unsigned char* base = smem + (s_k - smem_addr(smem));
  const float* lse_tiles = reinterpret_cast<const float*>(base + (s_lse - s_k));
  const float* delta_tiles = reinterpret_cast<const float*>(base + (s_delta - s_k));
  uint64_t* full_kv = reinterpret_cast<uint64_t*>(base + Tr::kBarrierOffset);
  uint64_t* full = full_kv + 1;
  uint64_t* empty = full + kStages;
  uint64_t* dq_full = empty + kStages;        // per consumer: its dQ columns are in s_dq
  uint64_t* dq_empty = dq_full + 2;           // ... and were read by the copy engine
  uint64_t* ds_full = dq_empty + 2;           // kDqWhole, per dS^T buffer: both halves in
  uint64_t* ds_empty = ds_full + 2;           // ... and the tile's dQ products read them
  const uint32_t s_dq = s_k + Tr::kDqOffset;  // per consumer, 32-column boxes (128-byte swizzle)
  const int wg = threadIdx.x / 128, warp = threadIdx.x / kWarpSize % 4, lane = threadIdx.x % 32;
  const BlockTile<true> tile(d, kBn, d.kv_heads);
  const int g = tile.head, b = tile.b;
  const int n0 = tile.index * kBn;
  const int m_first = n0 / kBm, m_count = (d.seq + kBm - 1) / kBm - m_first;
  const int iters = d.group * m_count;  // (query head, query tile) pairs
  auto tile_of = [&](int it, int& h, int& m0) {
    h = g * d.group + it / m_count;
    m0 = (m_first + it % m_count) * kBm;
  };

  if (threadIdx.x == 0) {
    hopper::mbar_init(full_kv, 2);  // K's and V's arrive.expect_tx
    for (int s = 0; s < kStages; ++s) {
      hopper::mbar_init(&full[s], Tr::kFullArrivals);
      hopper::mbar_init(&empty[s], 8);  // one per consumer warp
    }
    for (int c = 0; c < 2; ++c) {
      hopper::mbar_init(&dq_full[c], 128);  // every thread of the consumer
      hopper::mbar_init(&dq_empty[c], 1);
      hopper::mbar_init(&ds_full[c], 8);   // every consumer warp
      hopper::mbar_init(&ds_empty[c], 4);  // the dQ consumer's warps
    }
    hopper::fence_mbar_init();
  }
  __syncthreads();

  if (wg == 0) {  // producer: warp 0 loads, warp 1 adds dQ into the f32 buffer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(Tr::kProducerRegs));
    if (warp == 1 && lane == 0) {
      for (int it = 0; it < iters; ++it) {
        int h, m0;
        tile_of(it, h, m0);
        // The consumers with dQ columns of this tile, and the how-manieth such tile it is.
        const int c0 = Tr::kDqWhole ? it & 1 : 0, c1 = Tr::kDqWhole ? c0 : 1;
        const int use = Tr::kDqWhole ? it >> 1 : it;
        for (int c = c0; c <= c1; ++c) {
          hopper::mbar_wait(&dq_full[c], use & 1);
#pragma unroll
          for (int box = 0; box < Tr::kDqCols / 32; ++box)  // 32 f32 columns (128 bytes) each
            hopper::tma_reduce_add_3d(&dq_map, s_dq + c * Tr::kDqBytes + box * kBm * 128,
                                      h * kHd + (c - c0) * Tr::kDqCols + box * 32, m0, b);
          asm volatile("cp.async.bulk.commit_group;" ::: "memory");
          asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
          hopper::mbar_arrive(&dq_empty[c]);
        }
      }
      asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
    }
    if (warp != 0) return;
    if (lane == 0) {
      tma_load_tile<kBn, kHd>(s_k, &k_map, full_kv, g * kHd, n0, b);
      tma_load_tile<kBn, kHd>(s_v, &v_map, full_kv, g * kHd, n0, b);
    }
    for (int it = 0; it < iters; ++it) {
      const int stage = it % kStages;
      int h, m0;
      tile_of(it, h, m0);
      hopper::mbar_wait(&empty[stage], ((it / kStages) & 1) ^ 1);
      if (lane == 0) {
        tma_load_tile<kBm, kHd>(s_q + stage * Tr::kQBytes, &q_map, &full[stage], h * kHd, m0, b);
        tma_load_tile<kBm, kHd>(s_do + stage * Tr::kQBytes, &dout_map, &full[stage], h * kHd, m0,
                                b);
      }
      const int64_t stats = (static_cast<int64_t>(b) * d.heads + h) * d.seq;
#pragma unroll
      for (int j = 0; j < kBm / 32; ++j) {  // queries past T read as zeros
        const int row = lane + 32 * j, t = m0 + row;
        const bool valid = t < d.seq;
        const uint32_t dst = stage * Tr::kStatBytes + 4 * row;
        cp_async_4(s_lse + dst, lse + stats + (valid ? t : 0), valid);
        cp_async_4(s_delta + dst, delta + stats + (valid ? t : 0), valid);
      }
      asm volatile(
          "cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(smem_addr(&full[stage]))
          : "memory");
    }
    cp_async_wait<0>();
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(Tr::kConsumerRegs));
  // consumer: keys cw * 64.. of the block; the dQ of every other tile (kDqWhole) or dQ
  // columns cw * kHd / 2.. of every tile (through a shuffle, which ptxas sees as uniform,
  // so a branch on cw does not serialize the wgmmas)
  const int cw = __shfl_sync(0xffffffffu, wg, 0) - 1;
  const int quad_row = lane / 4, quad_col = lane % 4 * 2;
  const int key_row = cw * 64 + warp * 16 + quad_row;  // the lane's first key in the tile
  constexpr int kDqRegs = kBm * Tr::kDqCols / 128;     // floats of a thread's dQ
  // This consumer's dQ columns of K (N-major B: 64-column chunks kBn * 128 bytes apart).
  const int dq_col0 = Tr::kDqWhole ? 0 : cw * kHd / 2;
  const uint32_t s_k_dq = s_k + dq_col0 / 64 * (kBn * 128) + dq_col0 % 64 * 2;
  float dq[kDqRegs];

  float dk_acc[kHd / 2], dv_acc[kHd / 2];
#pragma unroll
  for (int i = 0; i < kHd / 2; ++i) dk_acc[i] = dv_acc[i] = 0.f;
  hopper::mbar_wait(full_kv, 0);

  for (int it = 0; it < iters; ++it) {
    const int stage = it % kStages;
    int h, m0;
    tile_of(it, h, m0);
    const uint32_t s_qs = s_q + stage * Tr::kQBytes, s_dos = s_do + stage * Tr::kQBytes;
    const uint32_t s_dsb = s_ds + (it & 1) * Tr::kDsBytes;
    const float* lse_s = lse_tiles + stage * kBm;
    const float* delta_s = delta_tiles + stage * kBm;
    hopper::mbar_wait(&full[stage], (it / kStages) & 1);
    // On the diagonal (the key block's first query tile), consumer 1's keys all come after
    // the tile's last query: its P^T and dS^T are zero, so it skips its products and
    // softmax and only writes its dS^T rows as zeros for the dQ product.
    uint32_t ds_frag[kBm / 16][4];
    if (cw == 0 || n0 + 64 <= m0 + kBm - 1) {
      // S^T = K Q^T and dP^T = V dO^T: (64 keys, 64 queries) per consumer.
      float st[kBm / 2], dpt[kBm / 2];
#pragma unroll
      for (int i = 0; i < kBm / 2; ++i) st[i] = dpt[i] = 0.f;
      pin(st);  // the zeros are written before the fence, not sunk past it
      pin(dpt);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kHd / 16; ++ks) {
        const uint32_t chunk = (ks / 4) * 128, col = (ks % 4) * 32;
        const uint32_t rows = chunk * kBn + cw * 64 * 128 + col;
        wgmma_ss_n64<0, 0>(st, wgmma_desc(s_k + rows, 16, 1024),
                           wgmma_desc(s_qs + chunk * kBm + col, 16, 1024));
        wgmma_ss_n64<0, 0>(dpt, wgmma_desc(s_v + rows, 16, 1024),
                           wgmma_desc(s_dos + chunk * kBm + col, 16, 1024));
      }
      wgmma_commit();
      wgmma_wait<0>();
      pin(st);
      pin(dpt);

      // P^T = exp(S^T * scale - lse); dS^T = P^T (dP^T - D). Zero above the diagonal
      // (only where this consumer's keys reach past the tile's first query) and for
      // queries past T (their lse and D were read as zeros).
      const bool need_mask = n0 + cw * 64 + 63 > m0 || m0 + kBm > d.seq;
#pragma unroll
      for (int nt = 0; nt < kQt; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = nt * 8 + quad_col + (e & 1);  // query within the tile
          float p = exp2_approx(fmaf(st[4 * nt + e], d.scale_log2, -lse_s[col] * kLog2e));
          if (need_mask) {
            const int key = n0 + key_row + (e >> 1) * 8, query = m0 + col;
            if (key > query || query >= d.seq) p = 0.f;
          }
          st[4 * nt + e] = p;
          dpt[4 * nt + e] = p * (dpt[4 * nt + e] - delta_s[col]);
        }
      uint32_t p_frag[kBm / 16][4];
#pragma unroll
      for (int kk = 0; kk < kBm / 16; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          p_frag[kk][r] = pack_bf16(st[8 * kk + 2 * r], st[8 * kk + 2 * r + 1]);
          ds_frag[kk][r] = pack_bf16(dpt[8 * kk + 2 * r], dpt[8 * kk + 2 * r + 1]);
        }

      // dV += P^T dO and dK += dS^T Q: k16 step kk is 16 query rows of dO and Q.
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBm / 16; ++kk) {
        wgmma_rs<kHd>(dv_acc, p_frag[kk], wgmma_desc(s_dos + kk * 2048, kBm * 128, 1024));
        wgmma_rs<kHd>(dk_acc, ds_frag[kk], wgmma_desc(s_qs + kk * 2048, kBm * 128, 1024));
      }
      wgmma_commit();
    } else {
#pragma unroll
      for (int kk = 0; kk < kBm / 16; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) ds_frag[kk][r] = 0u;
    }

    // dS^T (this consumer's 64 keys) into its rows of the tile's buffer, in the wgmma
    // layout (one 64-query chunk: piece j of row r at j ^ (r % 8)). kDqWhole: once the
    // dQ products of the tile two back have read the buffer.
    const int ds_use = it >> 1;  // the buffer's how-manieth tile
    if (Tr::kDqWhole && it >= 2) hopper::mbar_wait(&ds_empty[it & 1], (ds_use - 1) & 1);
#pragma unroll
    for (int kk = 0; kk < kBm / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = key_row + (r & 1) * 8, col = kk * 16 + (r >> 1) * 8 + quad_col;
        st_shared_u32(s_dsb + row * 128 + ((((col >> 3) ^ (row & 7))) << 4) + (col & 7) * 2,
                      ds_frag[kk][r]);
      }
    fence_proxy_async();
    if constexpr (Tr::kDqWhole) {
      hopper::mbar_arrive_warp(&ds_full[it & 1]);
      if ((it & 1) != cw) {  // the other consumer makes this tile's dQ
        wgmma_wait<0>();
        pin(dk_acc);
        pin(dv_acc);
        hopper::mbar_arrive_warp(&empty[stage]);  // Q, dO, lse, D of the stage are read
        continue;
      }
      hopper::mbar_wait(&ds_full[it & 1], ds_use & 1);  // the other consumer's dS^T rows
    } else {
      hopper::named_sync(1, 256);  // both consumers' dS^T
    }

    // dQ (64 queries, this consumer's kDqCols columns) = dS K over all 128 keys.
#pragma unroll
    for (int i = 0; i < kDqRegs; ++i) dq[i] = 0.f;
    pin(dq);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBn / 16; ++kk)
      wgmma_ss<Tr::kDqCols, 1, 1>(dq, wgmma_desc(s_dsb + kk * 2048, 1024, 1024),
                                  wgmma_desc(s_k_dq + kk * 2048, kBn * 128, 1024));
    wgmma_commit();
    wgmma_wait<0>();
    pin(dq);
    pin(dk_acc);
    pin(dv_acc);
    if constexpr (Tr::kDqWhole) hopper::mbar_arrive_warp(&ds_empty[it & 1]);
    hopper::mbar_arrive_warp(&empty[stage]);  // Q, dO, lse, D of the stage are read
    // dQ into this consumer's boxes once the copy engine has read its last tile's: element
    // (row, col) of box col / 32 at row * 128 + 16-byte piece (col % 32 / 4) ^ (row % 8).
    const int dq_use = Tr::kDqWhole ? it >> 1 : it;  // this consumer's how-manieth dQ
    if (dq_use > 0) hopper::mbar_wait(&dq_empty[cw], (dq_use - 1) & 1);
    const uint32_t dq_box = s_dq + cw * Tr::kDqBytes;
#pragma unroll
    for (int t = 0; t < Tr::kDqCols / 8; ++t)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int row = warp * 16 + quad_row + hf * 8, col = (t % 4) * 8 + quad_col;
        const uint32_t addr = dq_box + (t / 4) * (kBm * 128) + row * 128 +
                              (((col / 4) ^ (row % 8)) << 4) + (col % 4) * 4;
        asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(addr), "f"(dq[4 * t + 2 * hf]),
                     "f"(dq[4 * t + 2 * hf + 1])
                     : "memory");
      }
    fence_proxy_async();  // visible to the copy engine
    hopper::mbar_arrive(&dq_full[cw]);
  }

  // dK = scale * sum dS^T Q, dV = sum P^T dO over the group's heads.
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int key = n0 + key_row + hf * 8;
    if (key >= d.seq) continue;
    store_kv_row<kHd>(
        o, static_cast<int64_t>(b) * d.seq + key, key, g, quad_col, d.scale,
        [&](int dt, int e) { return dk_acc[4 * dt + 2 * hf + e]; },
        [&](int dt, int e) { return dv_acc[4 * dt + 2 * hf + e]; });
  }
#else
  __trap();  // not an sm_90a build: cuda::sm90a_kernels_run() keeps callers away
#endif
}

// ---- launchers ----

FlashDims flash_dims(const Tensor& q, const Tensor& k) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Hkv = k.size(2), hd = q.size(3);
  // One block per 64 positions of each sequence-head at most: the 1-D grid's limit.
  FG_CHECK(T < (int64_t{1} << 30) && B * H * ((T + 63) / 64) < (int64_t{1} << 31), "attention: q ",
           q.shape_str(), " is too large for the CUDA grid (B * H * T / 64 at most 2^31)");
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  return {static_cast<int>(T),
          static_cast<int>(H),
          static_cast<int>(Hkv),
          static_cast<int>(H / Hkv),
          1,
          H * hd,
          Hkv * hd,
          static_cast<float>(scale),
          static_cast<float>(scale * 1.4426950408889634)};
}

// The 1-D grid of `tiles` blocks per sequence-head, walked in grid_order.h's order.
unsigned ordered_grid(FlashDims& d, int64_t tiles, int64_t seq_heads) {
  d.grid_groups =
      grid_groups(static_cast<int>(tiles), static_cast<int>(seq_heads), cuda::sm_count());
  return static_cast<unsigned>(tiles * seq_heads);
}

template <class Kernel>
void allow_smem(Kernel kernel, int bytes) {
  FG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <class Tr>
void launch_flash_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& lse) {
  FlashDims d = flash_dims(q, k);
  auto kernel = flash_attention_forward_kernel<Tr>;
  allow_smem(kernel, Tr::kSmemBytes);
  const unsigned grid = ordered_grid(d, cuda::grid_for(d.seq, Tr::kBlockM), q.size(0) * d.heads);
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, cuda::stream()>>>(
      q.data<bf16>(), k.data<bf16>(), v.data<bf16>(), out.data<bf16>(), lse.data<float>(), d);
  FG_CUDA_CHECK(cudaGetLastError());
}

// A contiguous (B, T, heads, hd) bf16 or f32 tensor as a 3-D tensor map (row elements, T, B)
// in boxes of 128 bytes (64 bf16 or 32 f32 columns, the swizzle's row) by box_rows positions
// of one sequence; positions past T read as zeros and are not written.
CUtensorMap attention_map(const Tensor& t, int box_rows) {
  const bool f32 = t.dtype() == DType::F32;
  const cuuint64_t elem = f32 ? 4 : 2;
  const auto B = static_cast<cuuint64_t>(t.size(0)), T = static_cast<cuuint64_t>(t.size(1));
  const auto row = static_cast<cuuint64_t>(t.size(2) * t.size(3));
  const cuuint64_t dims[3] = {row, T, B};
  const cuuint64_t strides[2] = {row * elem, T * row * elem};  // bytes, of dims 1 and 2
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(128 / elem), static_cast<cuuint32_t>(box_rows),
                             1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  CUtensorMap map;
  const CUresult r = hopper::tensor_map_encoder()(
      &map, f32 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3,
      t.raw_data(), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FG_CHECK(r == CUDA_SUCCESS, "flash attention: cuTensorMapEncodeTiled failed (",
           static_cast<int>(r), ") for ", t.describe());
  return map;
}

template <class Tr>
void launch_flash_forward_ws(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse) {
  FlashDims d = flash_dims(q, k);
  auto kernel = flash_attention_forward_ws_kernel<Tr>;
  allow_smem(kernel, Tr::kSmemBytes);
  const unsigned blocks = ordered_grid(d, cuda::grid_for(d.seq, Tr::kBlockM), q.size(0) * d.heads);
  const Tensor tile_counter = Tensor::zeros({1}, DType::I32, q.device());
  const unsigned grid = std::min(blocks, static_cast<unsigned>(cuda::sm_count()));
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, cuda::stream()>>>(
      attention_map(q, Tr::kBlockM), attention_map(k, Tr::kBlockN), attention_map(v, Tr::kBlockN),
      out.data<bf16>(), lse.data<float>(), tile_counter.data<int32_t>(), static_cast<int>(blocks),
      d);
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class Tr>
void launch_flash_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& out, const Tensor& lse, const GradOut& o) {
  constexpr int kHd = Tr::kHeadDim;
  constexpr int kBlock = 256;
  FlashDims d = flash_dims(q, k);
  const int64_t B = q.size(0);
  cudaStream_t stream = cuda::stream();
  Tensor delta = Tensor::empty(lse.shape(), DType::F32, q.device());  // (B, H, T)
  Tensor dq_acc = Tensor::empty(q.shape(), DType::F32, q.device());   // (B, T, H, hd), zeroed below

  const int64_t rows = B * d.seq * d.heads;
  flash_attention_delta_kernel<kHd>
      <<<cuda::grid_for(rows * (kHd / 8), kBlock), kBlock, 0, stream>>>(
          dout.data<bf16>(), out.data<bf16>(), delta.data<float>(), dq_acc.data<float>(), rows,
          d.seq, d.heads);
  FG_CUDA_CHECK(cudaGetLastError());

  const unsigned grid = ordered_grid(d, cuda::grid_for(d.seq, Tr::kBlockN), B * d.kv_heads);
  if constexpr (Tr::kWarpSpecialized) {
    auto kernel = flash_attention_backward_ws_kernel<Tr>;
    allow_smem(kernel, Tr::kSmemBytes);
    kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(
        attention_map(q, Tr::kBlockM), attention_map(k, Tr::kBlockN), attention_map(v, Tr::kBlockN),
        attention_map(dout, Tr::kBlockM), attention_map(dq_acc, Tr::kBlockM), lse.data<float>(),
        delta.data<float>(), dq_acc.data<float>(), o, d);
  } else {
    auto kernel = flash_attention_backward_kernel<Tr>;
    allow_smem(kernel, Tr::kSmemBytes);
    kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(
        dout.data<bf16>(), q.data<bf16>(), k.data<bf16>(), v.data<bf16>(), lse.data<float>(),
        delta.data<float>(), dq_acc.data<float>(), o, d);
  }
  FG_CUDA_CHECK(cudaGetLastError());

  const int items = (o.rope ? o.half / 4 : 0) + (kHd - (o.rope ? 2 * o.half : 0)) / 4;
  flash_attention_dq_kernel<<<cuda::grid_for(rows * items, kBlock), kBlock, 0, stream>>>(
      dq_acc.data<float>(), o, rows, d.seq, d.heads, kHd, d.scale);
  FG_CUDA_CHECK(cudaGetLastError());
}

// Tilings, the default first: the fastest (or within noise of it) in
// bench_attention on an H100 (bench/results_attention.md) and, for the wgmma
// forward, an H200; the others stay for the benchmark and the tests. Names read
// "bm<query rows>_bn<key rows>_w<warps>" ("wgmma_..." for the Hopper kernel).
using ForwardLauncher = void (*)(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                 const Tensor&);
using BackwardLauncher = void (*)(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  const Tensor&, const Tensor&, const GradOut&);
template <class Launcher>
struct Variant {
  const char* name;
  Launcher launch;
  bool hopper = false;  // the wgmma kernel: only an sm_90a build on a Hopper GPU runs it
};

// On an H200 (bench_attention, 2026-11-30) the warp-specialized Hopper kernels run
// 1.16-1.95x the best mma.sync tiling: forward 582 vs 297 TFLOP/s at hd 128, T = 4096,
// 257 vs 223 at the GPT-2-small shape; backward 428 vs 221 and 202 vs 150. They are the
// default wherever they run.
constexpr Variant<ForwardLauncher> kForward64[] = {
    {"wgmma_ws_bm128_bn128", launch_flash_forward_ws<HopperWsFwdTraits<64>>, true},
    {"bm128_bn64_w4", launch_flash_forward<FwdTraits<64, 4, 2, 64>>},
    {"bm64_bn64_w4", launch_flash_forward<FwdTraits<64, 4, 1, 64>>},
};
constexpr Variant<ForwardLauncher> kForward128[] = {
    {"wgmma_ws_bm128_bn128", launch_flash_forward_ws<HopperWsFwdTraits<128>>, true},
    {"bm64_bn64_w4", launch_flash_forward<FwdTraits<128, 4, 1, 64>>},
    {"bm128_bn32_w4", launch_flash_forward<FwdTraits<128, 4, 2, 32>>},
};
constexpr Variant<BackwardLauncher> kBackward64[] = {
    {"wgmma_ws_bm64_bn128", launch_flash_backward<HopperWsBwdTraits<64>>, true},
    {"bm64_bn64_w4", launch_flash_backward<BwdTraits<64, 4, 64>>},
    {"bm64_bn128_w8", launch_flash_backward<BwdTraits<64, 8, 64>>},
};
constexpr Variant<BackwardLauncher> kBackward128[] = {
    {"wgmma_ws_bm64_bn128", launch_flash_backward<HopperWsBwdTraits<128>>, true},
    {"bm64_bn128_w8", launch_flash_backward<BwdTraits<128, 8, 64>>},
    {"bm64_bn64_w4", launch_flash_backward<BwdTraits<128, 4, 64>>},
};

// The variants this device runs, in list order: variant i of a call is the
// i-th of them (so 0, the default, is the first runnable one).
template <class Launcher, size_t N>
std::vector<const Variant<Launcher>*> runnable(const Variant<Launcher> (&list)[N]) {
  std::vector<const Variant<Launcher>*> r;
  for (const Variant<Launcher>& v : list)
    if (!v.hopper || cuda::sm90a_kernels_run()) r.push_back(&v);
  return r;
}

template <class Launcher, size_t N64, size_t N128>
std::vector<const Variant<Launcher>*> runnable(const Variant<Launcher> (&v64)[N64],
                                               const Variant<Launcher> (&v128)[N128],
                                               int head_dim) {
  return head_dim == 64 ? runnable(v64) : runnable(v128);
}

template <class Launcher, size_t N64, size_t N128>
const Variant<Launcher>& pick(const Variant<Launcher> (&v64)[N64],
                              const Variant<Launcher> (&v128)[N128], int head_dim, int variant) {
  FG_CHECK(head_dim == 64 || head_dim == 128, "flash attention: head_dim ", head_dim,
           " is not 64 or 128");
  const auto list = runnable(v64, v128, head_dim);
  const int n = static_cast<int>(list.size());
  FG_CHECK(variant >= 0 && variant < n, "flash attention: variant ", variant, " of ", n);
  return *list[variant];
}

}  // namespace

bool flash_attention_supported(const Tensor& q) {
  return q.dtype() == DType::BF16 && (q.size(3) == 64 || q.size(3) == 128);
}

bool flash_attention_aligned(std::initializer_list<const Tensor*> operands) {
  for (const Tensor* t : operands)
    if (!t->starts_aligned(16)) return false;
  return true;
}

int flash_attention_variant_count(int head_dim, bool backward) {
  if (head_dim != 64 && head_dim != 128) return 0;
  return static_cast<int>(backward ? runnable(kBackward64, kBackward128, head_dim).size()
                                   : runnable(kForward64, kForward128, head_dim).size());
}

const char* flash_attention_variant_name(int head_dim, bool backward, int variant) {
  return backward ? pick(kBackward64, kBackward128, head_dim, variant).name
                  : pick(kForward64, kForward128, head_dim, variant).name;
}

void flash_attention_forward_cuda(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, int variant) {
  FG_CHECK(flash_attention_supported(q), "flash attention: q ", q.describe(),
           " is not bf16 with head_dim 64 or 128");
  if (q.numel() == 0) return;
  FG_CHECK(flash_attention_aligned({&q, &k, &v, &out}),
           "flash attention: q, k, v and out must start on 16-byte boundaries");
  pick(kForward64, kForward128, static_cast<int>(q.size(3)), variant).launch(q, k, v, out, lse);
}

void flash_attention_backward_cuda(const Tensor& dout, const Tensor& q, const Tensor& k,
                                   const Tensor& v, const Tensor& out, const Tensor& lse,
                                   const AttentionGrads& grads, int variant) {
  FG_CHECK(flash_attention_supported(q), "flash attention: q ", q.describe(),
           " is not bf16 with head_dim 64 or 128");
  if (q.numel() == 0) {
    grads.dk.zero_();
    grads.dv.zero_();
    return;
  }
  FG_CHECK(flash_attention_aligned({&dout, &q, &k, &v, &out, &grads.dq, &grads.dk, &grads.dv}),
           "flash attention: every bf16 operand must start on a 16-byte boundary");
  const GradOut o{grads.dq.data<bf16>(),
                  grads.dk.data<bf16>(),
                  grads.dv.data<bf16>(),
                  q.size(2) * q.size(3),
                  k.size(2) * k.size(3),
                  nullptr,
                  0,
                  false};
  pick(kBackward64, kBackward128, static_cast<int>(q.size(3)), variant)
      .launch(dout, q, k, v, out, lse, o);
}

bool flash_attention_backward_into_qkv_cuda(const Tensor& dout, const Tensor& q, const Tensor& k,
                                            const Tensor& v, const Tensor& out, const Tensor& lse,
                                            const Tensor& positions, int64_t rotary_dim,
                                            double theta, const Tensor& dqkv,
                                            const Tensor& rope_table, int variant) {
  const int64_t hd = q.size(3), H = q.size(2), Hkv = k.size(2);
  const bool rope_ok = rotary_dim == hd || rotary_dim == hd / 2;
  if (!flash_attention_supported(q) || !rope_ok || q.numel() == 0 ||
      !flash_attention_aligned({&dout, &q, &k, &v, &out, &dqkv}))
    return false;
  const Tensor table =
      rope_table.defined() ? rope_table : rope_table_cuda(positions, rotary_dim, theta);
  bf16* base = dqkv.data<bf16>();
  const GradOut o{base,
                  base + H * hd,
                  base + (H + Hkv) * hd,
                  (H + 2 * Hkv) * hd,
                  (H + 2 * Hkv) * hd,
                  reinterpret_cast<const float2*>(table.raw_data()),
                  static_cast<int>(rotary_dim / 2),
                  positions.dim() == 2};
  pick(kBackward64, kBackward128, static_cast<int>(hd), variant).launch(dout, q, k, v, out, lse, o);
  return true;
}

}  // namespace fg::ops::detail
