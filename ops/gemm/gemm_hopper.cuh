// A Hopper (sm_90a) bf16 GEMM with a pluggable epilogue: acc = A B^T in fp32, A (M, K) and
// B (N, K) both row-major ("TN": both K-major, the layout wgmma reads without transposes) or
// B given as (K, N) (BLayout::kKN, read N-major), each finished tile handed to an epilogue
// functor that changes it in fp32 registers (bias, RoPE, SwiGLU and its backward, ...) and
// stores it, rounded to bf16 and staged in shared memory, by TMA. Include from .cu files only
// (device code and a host launcher).
//
// Warp-specialized and persistent, as CUTLASS's sm90 kernels and FlashAttention-3: one block
// per SM walks the output tiles (grouped order, for L2); warpgroup 0 is the producer, whose
// one elected thread feeds a ring of TMA loads (128-byte swizzle) completing on mbarriers;
// warpgroups 1 and 2 are consumers issuing m64n256k16 wgmma with both operands from shared
// memory. How the consumers share the tiles is the GemmSchedule (gemm_hopper.h):
// - cooperative: both on one 128 x 256 tile, 64 rows each. The producer runs ahead into the
//   next tile while they run the epilogue, but the tensor cores idle meanwhile.
// - ping-pong: each on its own 64 x 256 tile (the block's tiles alternate between them);
//   an ordered pair of named barriers hands the tensor cores from one to the other, so one's
//   epilogue runs under the other's MMAs (CUTLASS's KernelTmaWarpSpecializedPingpong).
// - 2-CTA: either of the above in clusters of two blocks on row tiles m, m + 1 of one column
//   tile; each block loads half of the B tile and multicasts it into both, halving B's
//   traffic from L2 (CUTLASS's cluster shape 2x1x1).
// Each consumer stages its finished 64 x 256 tile in its own shared buffer and one of its
// threads stores it by TMA in 64 x 64 boxes: the copy engine writes whole sectors, which
// 4-byte stores from the fragments did not (at K = 768 that took the best schedule from
// 0.82-0.94x cuBLASLt to 1.02-1.23x; bench/RESULTS.md, "Hopper GEMM").
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <vector>

#include "core/cuda_utils.h"
#include "core/dtype.h"
#include "core/wgmma.cuh"
#include "ops/gemm/gemm_hopper.h"

namespace fg::ops::detail::hopper {

constexpr int kBlockN = 256;      // one m64n256 wgmma per k16 step covers a consumer's columns
constexpr int kBlockK = 64;       // 64 bf16 = 128 bytes: one row of a k tile is one swizzle row
constexpr int kGroupRows = 2048;  // rows of output that walk the column tiles together (L2)
constexpr int kWarpgroup = 128;
constexpr int kThreads = 3 * kWarpgroup;                // producer + two consumers
constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // 128*40 + 256*232 <= 64K
constexpr int kTileBytesB = kBlockN * kBlockK * 2;      // 32 KB
constexpr int kStoreBox = 64;                           // TMA store boxes: 64 x 64 bf16
constexpr int kOutTileBytes = 64 * kBlockN * 2;         // a consumer's staged 64 x 256 tile
constexpr int kSlotBytes = kOutTileBytes / 2;           // a staged epilogue's quarter slot
static_assert(kStoreBox == kBlockK, "output maps are made by kmajor_map: boxes kBlockK wide");
constexpr int kSmemLimit = 227 * 1024;                  // per block, on sm_90

// A kKN B's k tiles (gemm_hopper.h) land as 64-column chunks of 64 k rows, which wgmma reads
// N-major.
constexpr int kChunkBytesKN = 64 * kBlockK * 2;  // one 64-column chunk of a kKN B tile

// Sizes that follow from the schedule. A "unit" is what one cluster computes per step of the
// persistent loop: kCluster row tiles of kBlockM rows by one 256-column tile.
template <GemmSchedule kSchedule>
struct ScheduleConfig {
  static constexpr bool kPingPong =
      kSchedule == GemmSchedule::kPingPong || kSchedule == GemmSchedule::kPingPong2Cta;
  static constexpr int kCluster =
      kSchedule == GemmSchedule::kCooperative2Cta || kSchedule == GemmSchedule::kPingPong2Cta ? 2
                                                                                              : 1;
  static constexpr int kBlockM = kPingPong ? 64 : 128;  // rows of a block's tile
  static constexpr int kTileBytesA = kBlockM * kBlockK * 2;
  static constexpr int kStageBytes = kTileBytesA + kTileBytesB;  // 48 KB; ping-pong 40 KB
  static constexpr int kStages = kPingPong ? 4 : 3;  // what fits in 227 KB beside the outputs
  static constexpr int kOutOffset = kStages * kStageBytes;  // then each consumer's out tile
  // Arrivals that free a stage: one per consumer warp that read it, in every block of the
  // cluster (a block's B half lands in its peer's ring too, so its producer must wait for both).
  static constexpr int kReleaseArrivals = (kPingPong ? 4 : 8) * kCluster;
  static constexpr int kGroupUnits = kGroupRows / (kBlockM * kCluster);
  static constexpr int kBarrierOffset = kOutOffset + 2 * kOutTileBytes;
  // full and empty per stage, then two per consumer for a staged epilogue's operands
  static constexpr int kSmemBytes = kBarrierOffset + (2 * kStages + 4) * 8 + 1024;  // + to align
  static_assert(kTileBytesA % 1024 == 0 && kStageBytes % 1024 == 0 &&
                    kTileBytesB / kCluster % 1024 == 0,
                "swizzle atoms start at 1024");
  static_assert(kSmemBytes <= kSmemLimit, "the ring does not fit in shared memory");
};

struct Problem {
  int M, N, K;
  int units_m, tiles_n, k_tiles;  // units_m: row units of kCluster * kBlockM rows
  // 0, or B is two stacked halves of b_half rows whose rows pair up (a gate and an up
  // projection): then column tile n0 holds rows n0/2 .. n0/2 + 127 of the first half in its
  // columns 0..127 and the same rows of the second half in columns 128..255, so a thread's
  // fragment holds both columns of each pair (see gemm_tn_kernel).
  int b_half;
};

// The box of shared memory at src (64 x 64 bf16, 128-byte rows, 128-byte swizzle) stored by
// TMA into `map` at (inner, outer) = (column, row), in this thread's bulk group; the parts
// outside the tensor are not written.
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, uint32_t src, int inner,
                                             int outer) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"(map),
      "r"(src), "r"(inner), "r"(outer)
      : "memory");
#endif
}

// An epilogue has two members, both __forceinline__ (a call would serialize the wgmma
// pipeline):
// - apply(row, col0, v): one row segment of a tile in fp32, changed in place before it is
//   rounded to bf16; v[2j] and v[2j + 1] are columns col0 + 8j and col0 + 8j + 1. Rows past
//   M come too (their values are dropped; apply must not read past its tables for them).
// - store(box, row0, col0): TMA-stores (tma_store_2d) the bf16 64 x 64 box at shared address
//   `box`, rows row0.., columns col0.. of the product, or nothing for columns past it.
// One with a second output made from the same tile (SwiGLU's product beside the gate and up it
// came from) also has kSecondBoxes (its width in 64-column boxes), apply_second (as apply, on
// the accumulators again; it leaves the output in v's first 16 kSecondBoxes values) and
// store_second (as store, with col0 a column of the tile): staged and stored once the
// first stores of the boxes it overwrites have read them.
// An epilogue with a tile of operands of its own (SwiGLU's backward: gate and up) may instead
// be staged (kStagedQuarters): the tile goes in four quarters of 64 columns through the two
// 16 KB slots of the consumer's output buffer. load_quarter(slot, bar, row0, col) has the
// leader bring a quarter's operands in by TMA, two 64 x 64 boxes counted on bar (the first
// two quarters' while the tile's products run); load_staged(a, b) reads a pair of operands at
// shared addresses a (the slot's first box) and b (its second) into a Staged value, and
// apply_staged(a, b, staged, acc0, acc1) turns it and the two accumulators of those columns
// into its outputs, written over the operands; store_quarter(slot, row0, col) stores the two
// boxes by TMA.

// The plain epilogue: c = bf16(acc + bias), c (M, N) clipped by TMA at its edges.
struct StoreBf16 {
  CUtensorMap c_map;  // c, in kStoreBox x kStoreBox boxes (kmajor_map)
  const bf16* bias;   // (N) or null
  int N;

  __device__ __forceinline__ void apply(int, int col0, float (&v)[64]) const {
    if (bias == nullptr) return;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int col = col0 + 8 * j;
      if (col + 1 < N) {  // col is even: a 4-byte pair
        const uint32_t b = *reinterpret_cast<const uint32_t*>(bias + col);
        v[2 * j] += __uint_as_float(b << 16);
        v[2 * j + 1] += __uint_as_float(b & 0xffff0000u);
      } else if (col < N) {
        v[2 * j] += bf16_to_float(bias[col]);
      }
    }
  }
  __device__ __forceinline__ void store(uint32_t box, int row0, int col0) const {
    tma_store_2d(&c_map, box, col0, row0);
  }
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // the PTX below exists on sm_90a only

__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count));
}
// Makes this thread's mbarrier inits visible to the copy engine (TMA) before its first copy.
__device__ __forceinline__ void fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// One arrival that also tells the barrier to expect `bytes` from the copy engine.
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
// One arrival per warp, once every lane of it is done with what the barrier guards (a
// consumer warp releasing a ring stage whose reads its wgmma_wait retired).
__device__ __forceinline__ void mbar_arrive_warp(uint64_t* bar) {
  __syncwarp();
  if (threadIdx.x % 32 == 0) mbar_arrive(bar);
}
// Returns once the phase of parity `parity` has completed (parity 1 on a fresh barrier:
// at once, the phase "before" the first counts as completed).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// The box of `map` at (inner, outer) = (k, row) into shared memory, counted on `bar`;
// elements out of bounds arrive as zeros (and count as bytes).
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint64_t* bar,
                                            int inner, int outer) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4}], [%2];" ::"r"(dst),
      "l"(map), "r"(smem_addr(bar)), "r"(inner), "r"(outer)
      : "memory");
}

// The same, for a box that lands at the same offset in the shared memory of every block of
// the cluster named in cta_mask (bit r: rank r), counted on the mbarrier at bar's offset in
// each of them.
__device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const CUtensorMap* map,
                                                      uint64_t* bar, int inner, int outer,
                                                      uint16_t cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      ".multicast::cluster [%0], [%1, {%3, %4}], [%2], %5;" ::"r"(dst),
      "l"(map), "r"(smem_addr(bar)), "r"(inner), "r"(outer), "h"(cta_mask)
      : "memory");
}

// `bytes` (a multiple of 16) from global src to shared dst, both 16-byte aligned, by the copy
// engine without a tensor map, counted on `bar`.
__device__ __forceinline__ void bulk_load_1d(uint32_t dst, const void* src, uint32_t bytes,
                                             uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
          "r"(dst),
      "l"(src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}

// The box of a 3-D `map` at (inner, middle, outer) into shared memory, counted on `bar`;
// elements out of bounds arrive as zeros (and count as bytes). For flash attention's
// (B, T, row) operands: rows past T read as zeros, not as the next sequence's.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, uint64_t* bar,
                                            int inner, int middle, int outer) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(dst),
      "l"(map), "r"(smem_addr(bar)), "r"(inner), "r"(middle), "r"(outer)
      : "memory");
}

// The box of shared memory at src added element-wise into a 3-D `map` at (inner, middle,
// outer) by the copy engine, in this thread's bulk group; the parts outside are not written.
__device__ __forceinline__ void tma_reduce_add_3d(const CUtensorMap* map, uint32_t src, int inner,
                                                  int middle, int outer) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group"
      " [%0, {%2, %3, %4}], [%1];" ::"l"(map),
      "r"(src), "r"(inner), "r"(middle), "r"(outer)
      : "memory");
}

// One arrival on the mbarrier at bar's offset in the block of rank `rank` of this cluster
// (this block's own rank included). The default .release.cta, as CUTLASS's ClusterBarrier:
// the stage's reads were by wgmmas that wgmma.wait_group retired, and .release.cluster
// would add a MEMBAR.ALL.GPU, which waits for the epilogue's stores still in flight.
__device__ __forceinline__ void mbar_arrive_cluster(uint64_t* bar, uint32_t rank) {
  asm volatile(
      "{\n"
      ".reg .b32 remote;\n"
      "mapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(rank)
      : "memory");
}

__device__ __forceinline__ uint32_t cluster_ctarank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_id_x() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_count_x() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%nclusterid.x;" : "=r"(r));
  return r;
}
// Every thread of every block of the cluster; what each wrote before (mbarrier inits
// included) is visible to all after.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;" ::: "memory");
}

// Named barriers (ids 1 and 2; 0 is __syncthreads) of `threads` threads: sync waits for the
// count, arrive adds its warp's threads and goes on.
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// A wgmma shared-memory descriptor, K-major with 128-byte swizzling: rows 128 bytes apart,
// 8-row atoms 1024 bytes apart (stride field 64 = 1024 >> 4), leading field unused (1),
// bits 62-63 = 1 for the 128-byte swizzle. Atoms start 1024-aligned, so base offset 0; a k16
// step within the 128-byte row adds 32 bytes to the start address (the swizzle is applied to
// the absolute address, as CUTLASS's descriptor iterator relies on).
__device__ __forceinline__ uint64_t kmajor_desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

// N-major (a kKN B tile): 64-column chunks `leading` = kChunkBytesKN apart, 8-row atoms of
// 1024 bytes (`stride`); a k16 step is 16 rows = 2048 bytes further.
__device__ __forceinline__ uint64_t nmajor_desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>(kChunkBytesKN >> 4) << 16) | (64ull << 32) | (1ull << 62);
}

// D (64 x 256, fp32) (+)= A (64 x 16) B (16 x 256)^T, A K-major in shared memory, B K-major
// (kNMajorB 0) or N-major (1). kScaleD 0 ignores D's old value: the first product of a tile
// needs no zeroed registers.
template <int kScaleD, int kNMajorB = 0>
__device__ __forceinline__ void wgmma_m64n256k16_ss(float (&d)[128], uint64_t desc_a,
                                                    uint64_t desc_b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, "
      "%111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, "
      "%125, %126, %127}, %128, %129, %130, 1, 1, 0, %131;"
      : FG_WGMMA_ACC32(d), FG_WGMMA_ACC32(d + 32), FG_WGMMA_ACC32(d + 64), FG_WGMMA_ACC32(d + 96)
      : "l"(desc_a), "l"(desc_b), "n"(kScaleD), "n"(kNMajorB));
}

// Unit u in grouped order: kGroup row units walk the column tiles together, so the blocks
// in flight at once share their rows of A and of B in L2.
template <int kGroup>
__device__ __forceinline__ void unit_origin(int u, const Problem& p, int& um, int& un) {
  const int per_group = kGroup * p.tiles_n;
  const int first_m = u / per_group * kGroup;
  const int group_rows = min(p.units_m - first_m, kGroup);
  const int in_group = u % per_group;
  um = first_m + in_group % group_rows;
  un = in_group / group_rows;
}

// A position in the ring: the producer walks every k tile of every unit of its block in
// order, stage after stage, and a stage's barriers flip phase once per trip round the ring.
// A consumer walks the positions of its own k tiles, skipping (ping-pong) the other's.
template <int kStages>
struct RingPos {
  int stage = 0;
  uint32_t phase = 0;
  __device__ __forceinline__ void advance() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
  __device__ __forceinline__ void skip(int n) {  // advance() n times
    const int s = stage + n;
    stage = s % kStages;
    phase ^= (s / kStages) & 1;
  }
};

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// Per tile, each consumer thread holds 2 rows x 64 floats of an m64n256 accumulator: rows
// r = m0 + 64 * consumer (cooperative; 0 in ping-pong, where a tile is 64 rows) + 16 * warp
// + lane / 4 and r + 8, columns n0 + 8j + 2 * (lane % 4) + {0, 1} for j = 0..31; it calls
// epi.apply(row, col0, v) once per row with col0 = n0 + 2 * (lane % 4), v[2j] and v[2j + 1]
// at columns col0 + 8j and col0 + 8j + 1, and one of its threads epi.store once per box.
//
// Synchronization, every wait with the arrivals that end it:
// - full[s] (count 1 + bytes): the producer's arrive.expect_tx of the whole stage, and the
//   copy engine's bytes (with 2 CTAs, half of B comes from the peer's multicast; bytes that
//   land before the expect_tx leave the count negative until it, which mbarriers allow). A
//   consumer waits for it at its position's parity.
// - empty[s] (count kReleaseArrivals): one arrival per consumer warp that read the stage, in
//   each block of the cluster, once its wgmmas retired. The producer waits for it at the
//   opposite parity before refilling (a fresh barrier passes parity 1 at once).
//   Phases cannot mix: position q + kStages of a stage is filled only after every release
//   of position q, and released only after it was filled.
// - Ping-pong turns, named barriers 1 (consumer 0 may issue) and 2 (consumer 1 may issue),
//   256 threads each: the waiting consumer's bar.sync (128) + the other's bar.arrive (128).
//   Consumer c takes the block's tiles i = c, c + 2, ...; before tile i it waits for turn
//   c (except consumer 0 at i = 0) and after issuing tile i's last wgmma it arrives on the
//   other's turn. So the k tiles are issued in ring order, consumer by consumer, which the
//   full barriers need: when a consumer waits at position q, every earlier position of the
//   stage has been waited for (by the other, before the turn came), so the barrier is in
//   the phase of q or just past it and the parity test cannot pass a phase early. A
//   barrier's arrivals never run a round ahead: consumer c arrives on turn 1 - c again only
//   after its own turn c completed, which needs 1 - c's bar.sync on the first arrival done.
//   The last arrival of the block (on the turn of a consumer with no tiles left) is never
//   waited for, harmless at exit.
// - Output buffers, named barrier 3 + consumer (its 128 threads): the thread that issued
//   the previous tile's stores waits for their reads of the buffer (bulk wait_group.read),
//   then all sync, write, fence and sync again before it issues the next stores.
// - 2-CTA: a cluster barrier after the inits (the peer's barriers must exist before a
//   multicast or a remote arrival reaches them); at the end the producer waits for the last
//   kStages releases, so no peer still arrives on this block's barriers after it exits
//   (CUTLASS's load_tail). Both blocks of a cluster walk the same units and k tiles.
template <GemmSchedule kSchedule, BLayout kB, class Epi>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_tn_kernel(const __grid_constant__ CUtensorMap a_map,
                   const __grid_constant__ CUtensorMap b_map, const Problem p,
                   const __grid_constant__ Epi epi) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = ScheduleConfig<kSchedule>;
  constexpr int kStages = C::kStages, kStageBytes = C::kStageBytes, kBlockM = C::kBlockM;
  constexpr bool kKN = kB == BLayout::kKN;
  static_assert(!kKN || C::kCluster == 1, "a kKN B is loaded whole by each block");
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // 128-byte swizzled tiles want 1024-byte alignment, which the declaration does not promise.
  const uint32_t ring = (smem_addr(smem_raw) + 1023) & ~1023u;
  uint8_t* ring_ptr = smem_raw + (ring - smem_addr(smem_raw));
  uint64_t* full = reinterpret_cast<uint64_t*>(ring_ptr + C::kBarrierOffset);  // data landed
  uint64_t* empty = full + kStages;  // consumers are done reading it
  uint64_t* operands = empty + kStages;  // per consumer and slot: staged operands landed
  const int units = p.units_m * p.tiles_n;
  // This block's cluster walks units cluster, cluster + clusters, ...; its row tile in a
  // unit is number `rank` of the unit's kCluster.
  const int cluster = C::kCluster == 1 ? blockIdx.x : cluster_id_x();
  const int clusters = C::kCluster == 1 ? gridDim.x : cluster_count_x();
  const uint32_t rank = C::kCluster == 1 ? 0 : cluster_ctarank();
  auto origin = [&](int u, int& m0, int& n0) {
    int um, un;
    unit_origin<C::kGroupUnits>(u, p, um, un);
    m0 = (um * C::kCluster + rank) * kBlockM;
    n0 = un * kBlockN;
  };

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 1);  // the producer's arrive.expect_tx (+ the bytes)
      mbar_init(&empty[s], C::kReleaseArrivals);
    }
    for (int c = 0; c < 4; ++c) mbar_init(&operands[c], 1);  // the leader's arrive.expect_tx
    fence_mbar_init();
  }
  if constexpr (C::kCluster == 1)
    __syncthreads();
  else
    cluster_sync();

  const int wg = threadIdx.x / kWarpgroup;
  if (wg == 0) {  // producer: one thread keeps the ring full, across tile boundaries
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kProducerRegs));
    if (threadIdx.x == 0) {
      asm volatile("prefetch.tensormap [%0];" ::"l"(&a_map) : "memory");
      asm volatile("prefetch.tensormap [%0];" ::"l"(&b_map) : "memory");
      RingPos<kStages> pos;
      for (int u = cluster; u < units; u += clusters) {
        int m0, n0;
        origin(u, m0, n0);
        // With 2 CTAs a block's rows, or its half of B's, can lie wholly past M or N (odd
        // tile counts). Such a box is read from the last row instead: whatever it holds only
        // reaches outputs past M or N, which the epilogue drops.
        const int a_row = min(m0, p.M - 1);
        // First row of B's half tile h (128 rows; with one CTA and no b_half, the whole tile).
        const auto b_row = [&](int h) {
          return min(p.b_half ? h * p.b_half + n0 / 2 : n0 + h * (kBlockN / 2), p.N - 1);
        };
        for (int kt = 0; kt < p.k_tiles; ++kt) {
          mbar_wait(&empty[pos.stage], pos.phase ^ 1);  // the consumers' previous trip is done
          mbar_expect_tx(&full[pos.stage], kStageBytes);
          const uint32_t dst = ring + pos.stage * kStageBytes;
          tma_load_2d(dst, &a_map, &full[pos.stage], kt * kBlockK, a_row);
          if constexpr (kKN) {  // four 64-column chunks; one wholly past N reads the last
#pragma unroll
            for (int c = 0; c < kBlockN / 64; ++c)
              tma_load_2d(dst + C::kTileBytesA + c * kChunkBytesKN, &b_map, &full[pos.stage],
                          min(n0 + 64 * c, (p.N - 1) / 64 * 64), kt * kBlockK);
          } else if constexpr (C::kCluster == 1) {
            if (p.b_half == 0) {
              tma_load_2d(dst + C::kTileBytesA, &b_map, &full[pos.stage], kt * kBlockK, b_row(0));
            } else {  // b_map's boxes are half tiles
              tma_load_2d(dst + C::kTileBytesA, &b_map, &full[pos.stage], kt * kBlockK, b_row(0));
              tma_load_2d(dst + C::kTileBytesA + kTileBytesB / 2, &b_map, &full[pos.stage],
                          kt * kBlockK, b_row(1));
            }
          } else {
            tma_load_2d_multicast(dst + C::kTileBytesA + rank * (kTileBytesB / C::kCluster), &b_map,
                                  &full[pos.stage], kt * kBlockK, b_row(static_cast<int>(rank)),
                                  (1u << C::kCluster) - 1);
          }
          pos.advance();
        }
      }
      if constexpr (C::kCluster > 1) {
        for (int s = 0; s < kStages; ++s) {  // both blocks' consumers released every stage
          mbar_wait(&empty[pos.stage], pos.phase ^ 1);
          pos.advance();
        }
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kConsumerRegs));
  const int consumer = wg - 1, warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32;
  // Descriptors of stage 0 (this consumer's 64 rows of A; all 256 rows of B); stages and
  // k16 steps add their byte offset >> 4 (no carry: shared addresses stay below 2^18).
  const uint64_t desc_a0 = kmajor_desc(ring + (C::kPingPong ? 0 : consumer * 64 * 128));
  const uint64_t desc_b0 =
      kKN ? nmajor_desc(ring + C::kTileBytesA) : kmajor_desc(ring + C::kTileBytesA);
  constexpr int kStepB = kKN ? 16 * 128 / 16 : 2;  // a k16 step: 16 rows or 32 bytes, >> 4
  auto issue = [&](float(&acc)[128], int stage, auto first) {
    const uint64_t off = static_cast<uint64_t>(stage * kStageBytes) >> 4;
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      if (decltype(first)::value && kk == 0)
        wgmma_m64n256k16_ss<0, kKN>(acc, desc_a0 + off, desc_b0 + off);
      else
        wgmma_m64n256k16_ss<1, kKN>(acc, desc_a0 + off + 2 * kk, desc_b0 + off + kStepB * kk);
    }
  };
  auto release = [&](int stage) {  // the stage's wgmmas have retired
    if constexpr (C::kCluster == 1) {
      if (lane == 0) mbar_arrive(&empty[stage]);
    } else {
      if (lane < C::kCluster) mbar_arrive_cluster(&empty[stage], lane);  // lane r: rank r
    }
  };
  constexpr int kTurnThreads = 2 * kWarpgroup;
  const int my_turn = 1 + consumer, other_turn = 2 - consumer;  // named barrier ids

  float acc[128];
  RingPos<kStages> pos;
  const uint32_t out = ring + C::kOutOffset + consumer * kOutTileBytes;  // this consumer's
  const bool leader = threadIdx.x % kWarpgroup == 0;
  constexpr bool kStaged = [] {
    if constexpr (requires { Epi::kStagedQuarters; }) return Epi::kStagedQuarters;
    return false;
  }();
  int i = 0;  // index of the unit among this block's
  if constexpr (C::kPingPong) {
    if (consumer == 1) {
      i = 1;
      pos.skip(p.k_tiles);  // past consumer 0's first tile
    }
  }
  for (; cluster + i * clusters < units; i += C::kPingPong ? 2 : 1) {
    int m0, n0;
    origin(cluster + i * clusters, m0, n0);
    const int row0 = m0 + (C::kPingPong ? 0 : consumer * 64);
    if constexpr (kStaged) {  // the first two quarters' operands land while the products run
      if (leader) {
        asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
        epi.load_quarter(out, &operands[2 * consumer], row0, n0);
        epi.load_quarter(out + kSlotBytes, &operands[2 * consumer + 1], row0, n0 + 64);
      }
    }
    if constexpr (C::kPingPong) {
      if (i > 0) named_sync(my_turn, kTurnThreads);  // the other issued all its k tiles
    }
    // k tile 0 starts the sums (scale-d 0); then one wgmma group stays in flight: after
    // committing tile kt, waiting down to one pending group retires tile kt - 1, whose
    // stage goes back to the producer.
    mbar_wait(&full[pos.stage], pos.phase);
    wgmma_fence();  // orders the previous epilogue's reads of acc before the new writes
    issue(acc, pos.stage, std::true_type{});
    wgmma_commit();
    int prev = pos.stage;
    pos.advance();
    for (int kt = 1; kt < p.k_tiles; ++kt) {
      mbar_wait(&full[pos.stage], pos.phase);
      wgmma_fence();
      issue(acc, pos.stage, std::false_type{});
      wgmma_commit();
      wgmma_wait<1>();
      release(prev);
      prev = pos.stage;
      pos.advance();
    }
    if constexpr (C::kPingPong) {
      // The other's turn: its wgmmas queue behind this tile's last ones, and it issues
      // while this one drains and runs its epilogue. Its tile's k tiles come next in the ring.
      named_arrive(other_turn, kTurnThreads);
      pos.skip(p.k_tiles);
    }
    wgmma_wait<0>();
    release(prev);

    // Epilogue, meanwhile the producer fills the ring for the next tile and, in ping-pong,
    // the other consumer's wgmmas run. acc[4j + e] is row r + 8 * (e / 2), column 8j + 2 *
    // (lane % 4) + e % 2 of the consumer's 64 rows (r = 16 * warp + lane / 4); the bf16
    // pairs go to the buffer as four 64 x 64 boxes of 128-byte rows, chunk c of row r at
    // chunk c ^ (r % 8) (the 128-byte swizzle the TMA store reads; a warp's 4-byte writes
    // of one j hit 32 banks). The previous tile's stores must have read the buffer first.
    const int out_bar = 3 + consumer;  // named barrier of this consumer's 128 threads
    // Where this thread's pair j (columns 8j + 2 * (lane % 4) + 0, 1) of row r of a staging
    // buffer (the output buffer or one of its slots) lies.
    const auto pair_addr = [&](uint32_t buffer, int j, int r) {
      return buffer + (j / 8) * (kStoreBox * 128) + r * 128 + (((j % 8) ^ (lane / 4)) << 4) +
             4 * (lane % 4);
    };
    if constexpr (kStaged) {
      // Four quarters of 64 columns through the buffer's two slots: a quarter's operands (two
      // 64 x 64 boxes) land by TMA, each thread changes its pairs in place (apply_staged: the
      // two outputs over the two operands) and the leader stores them; quarter q + 2 is loaded
      // into q's slot as soon as q's stores have read it, while q + 1 is made.
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int s = q % 2;
        const uint32_t slot = out + s * kSlotBytes;
        if (q >= 1 && q <= 2 && leader) {  // quarter q + 1 into the other slot
          asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
          epi.load_quarter(out + (1 - s) * kSlotBytes, &operands[2 * consumer + 1 - s], row0,
                           n0 + 64 * (q + 1));
        }
        mbar_wait(&operands[2 * consumer + s], q / 2);  // two loads per slot and tile
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int r = warp * 16 + lane / 4 + 8 * half;  // r % 8 = lane / 4
          // Every operand of the row's 8 pairs read before the first is used: the shared
          // loads and stores keep their order, so the other way round each pair's chain
          // (load, the math, store) ran alone.
          typename Epi::Staged in[8];
#pragma unroll
          for (int jj = 0; jj < 8; ++jj) {
            const uint32_t a = pair_addr(slot, jj, r);
            in[jj] = epi.load_staged(a, a + kStoreBox * 128);
          }
#pragma unroll
          for (int jj = 0; jj < 8; ++jj) {
            const int j = 8 * q + jj;
            const uint32_t a = pair_addr(slot, jj, r);
            epi.apply_staged(a, a + kStoreBox * 128, in[jj], acc[4 * j + 2 * half],
                             acc[4 * j + 2 * half + 1]);
          }
        }
        fence_proxy_async();  // the slot's writes, visible to the copy engine
        named_sync(out_bar, kWarpgroup);
        if (leader) {
          epi.store_quarter(slot, row0, n0 + 64 * q);
          asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        }
      }
    } else {
      // The tile's first kBoxes 64-column boxes as `apply` leaves them, staged and stored by
      // the leader with `store`.
      // kUnread: how many of the last stores (one bulk group per box) may still be reading
      // the buffer, those of the boxes past the ones this stage writes.
      auto stage = [&](auto boxes, auto unread, auto&& apply, auto&& store) {
        constexpr int kBoxes = decltype(boxes)::value, kUnread = decltype(unread)::value;
        if (leader) asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(kUnread) : "memory");
        named_sync(out_bar, kWarpgroup);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int r = warp * 16 + lane / 4 + 8 * half;  // r % 8 = lane / 4
          float v[64];
#pragma unroll
          for (int j = 0; j < 32; ++j) {
            v[2 * j] = acc[4 * j + 2 * half];
            v[2 * j + 1] = acc[4 * j + 2 * half + 1];
          }
          apply(row0 + r, n0 + 2 * (lane % 4), v);
#pragma unroll
          for (int j = 0; j < 8 * kBoxes; ++j) {
            const __nv_bfloat162 pair = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
            const uint32_t addr = pair_addr(out, j, r);
            asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr),
                         "r"(*reinterpret_cast<const uint32_t*>(&pair))
                         : "memory");
          }
        }
        fence_proxy_async();  // the buffer's writes, visible to the copy engine
        named_sync(out_bar, kWarpgroup);
        if (leader) {
#pragma unroll
          for (int box = 0; box < kBoxes; ++box) {
            store(out + box * (kStoreBox * 128), row0, n0 + box * kStoreBox);
            asm volatile("cp.async.bulk.commit_group;" ::: "memory");
          }
        }
      };
      constexpr int kFirstBoxes = kBlockN / kStoreBox;
      stage(
          std::integral_constant<int, kFirstBoxes>{}, std::integral_constant<int, 0>{},
          [&](int row, int col0, float(&v)[64]) { epi.apply(row, col0, v); },
          [&](uint32_t box, int r0, int col) { epi.store(box, r0, col); });
      if constexpr (requires { Epi::kSecondBoxes; }) {
        static_assert(Epi::kSecondBoxes <= kFirstBoxes);
        stage(
            std::integral_constant<int, Epi::kSecondBoxes>{},
            std::integral_constant<int, kFirstBoxes - Epi::kSecondBoxes>{},
            [&](int row, int col0, float(&v)[64]) { epi.apply_second(row, col0, v); },
            [&](uint32_t box, int r0, int col) { epi.store_second(box, r0, col); });
      }
    }
  }
  // The last stores read shared memory before the block exits.
  if (threadIdx.x % kWarpgroup == 0) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
#else
  __trap();  // not an sm_90a build: cuda::sm90a_kernels_run() keeps launch_gemm_tn away
#endif
}

// ---- host ----

// An int per device, computed by init(device) on first use.
class PerDevice {
 public:
  template <class F>
  int get(int device, F init) {
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<int>(values_.size()) <= device) values_.resize(device + 1, -1);
    if (values_[device] < 0) values_[device] = init(device);
    return values_[device];
  }

 private:
  std::mutex mu_;
  std::vector<int> values_;
};

// cuTensorMapEncodeTiled from the driver through the runtime: no -lcuda.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    FG_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                   cudaEnableDefault, &found));
    FG_CHECK(found == cudaDriverEntryPointSuccess && f != nullptr,
             "gemm_tn: the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A (rows, cols) bf16 matrix with row stride ld read in (box_rows, kBlockK) boxes,
// 128-byte swizzle; out of bounds reads as zeros. Also the epilogues' output maps (box_rows
// kStoreBox), whose stores clip at the edges.
inline CUtensorMap kmajor_map(const bf16* base, int64_t rows, int64_t cols, int64_t ld,
                              int box_rows) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld) * 2};
  const cuuint32_t box[2] = {kBlockK, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(
      &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16*>(base), dims, strides, box,
      elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FG_CHECK(r == CUDA_SUCCESS, "gemm_tn: cuTensorMapEncodeTiled failed (", static_cast<int>(r),
           ") for a (", rows, ", ", cols, ") matrix with row stride ", ld);
  return map;
}

// acc = a (M, K; row stride lda) @ b^T, b (N, K) or, with kB = kKN, b^T (K, N), row stride
// ldb, handed to epi tile by tile (see gemm_tn_kernel), on `stream` of the current device,
// with the schedule kSchedule. paired_halves (kNK only): b's two halves (N / 2 rows each)
// pair up in each column tile (Problem).
template <GemmSchedule kSchedule = GemmSchedule::kCooperative, BLayout kB = BLayout::kNK, class Epi>
void launch_gemm_tn(const bf16* a, int64_t lda, const bf16* b, int64_t ldb, int M, int N, int K,
                    const Epi& epi, cudaStream_t stream, bool paired_halves = false) {
  using C = ScheduleConfig<kSchedule>;
  FG_CHECK(M >= 0 && N >= 0 && K > 0, "gemm_tn: M = ", M, ", N = ", N, ", K = ", K,
           " (K must be positive)");
  FG_CHECK(K % 8 == 0, "gemm_tn: K = ", K, " must be a multiple of 8 (TMA reads 16-byte rows)");
  const int b_cols = kB == BLayout::kKN ? N : K;  // b's row length
  FG_CHECK(lda >= K && ldb >= b_cols && lda % 8 == 0 && ldb % 8 == 0,
           "gemm_tn: row strides lda = ", lda, ", ldb = ", ldb,
           " must be at least a's and b's rows (", K, ", ", b_cols,
           ") and multiples of 8 elements (16 bytes, for TMA)");
  FG_CHECK(reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0,
           "gemm_tn: a and b must start 16-byte aligned (TMA)");
  FG_CHECK(!paired_halves || (N % 2 == 0 && kB == BLayout::kNK), "gemm_tn: N = ", N,
           " is not two halves of a (N, K) b");
  if (M == 0 || N == 0) return;
  int device = 0;
  FG_CUDA_CHECK(cudaGetDevice(&device));
  FG_CHECK(cuda::sm90a_kernels_run(),
           "gemm_tn: needs a Hopper GPU (compute capability 9.0) and a "
           "build for sm_90a (CMAKE_CUDA_ARCHITECTURES=90a)");
  const auto kernel = gemm_tn_kernel<kSchedule, kB, Epi>;
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute cluster_dims{};
  cluster_dims.id = cudaLaunchAttributeClusterDimension;
  cluster_dims.val.clusterDim = {C::kCluster, 1, 1};
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = C::kSmemBytes;
  config.stream = stream;
  config.attrs = &cluster_dims;
  config.numAttrs = 1;
  // Per device: raise the kernel's shared-memory limit, then count the clusters (of one
  // block, or of two) that can be resident at once.
  static PerDevice resident;
  const int max_clusters = resident.get(device, [&](int d) {
    FG_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
    if (C::kCluster == 1) return cuda::sm_count();
    config.gridDim = dim3(C::kCluster);
    int n = 0;
    FG_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&n, kernel, &config));
    return n;
  });
  FG_CHECK(max_clusters > 0, "gemm_tn: no cluster of ", C::kCluster,
           " blocks of this kernel fits on the GPU");
  const auto tiles_of = [](int64_t n, int block) {
    return static_cast<int>((n + block - 1) / block);
  };
  const Problem p{M,
                  N,
                  K,
                  tiles_of(M, C::kBlockM * C::kCluster),
                  tiles_of(N, kBlockN),
                  tiles_of(K, kBlockK),
                  paired_halves ? N / 2 : 0};
  const int64_t units = static_cast<int64_t>(p.units_m) * p.tiles_n;
  FG_CHECK(units < (int64_t{1} << 31), "gemm_tn: ", M, " x ", N, " has too many tiles");
  const CUtensorMap a_map = kmajor_map(a, M, K, lda, C::kBlockM);
  // Boxes of its share of B: a half tile with 2 CTAs or paired halves, else the whole tile.
  const CUtensorMap b_map =
      kB == BLayout::kKN
          ? kmajor_map(b, K, N, ldb, kBlockK)  // 64 x 64 chunks
          : kmajor_map(b, N, K, ldb, paired_halves ? kBlockN / 2 : kBlockN / C::kCluster);
  const int clusters = static_cast<int>(std::min<int64_t>(units, max_clusters));
  if constexpr (C::kCluster == 1) {
    kernel<<<clusters, kThreads, C::kSmemBytes, stream>>>(a_map, b_map, p, epi);
  } else {
    config.gridDim = dim3(clusters * C::kCluster);
    FG_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, a_map, b_map, p, epi));
  }
  FG_CUDA_CHECK(cudaGetLastError());
}

// launch_gemm_tn in pingpong_schedule(K) (gemm_hopper.h), for a (N, K) b.
template <class Epi>
void launch_gemm_tn_pingpong(const bf16* a, int64_t lda, const bf16* b, int64_t ldb, int M, int N,
                             int K, const Epi& epi, cudaStream_t stream,
                             bool paired_halves = false) {
  if (pingpong_schedule(K) == GemmSchedule::kPingPong2Cta)
    launch_gemm_tn<GemmSchedule::kPingPong2Cta>(a, lda, b, ldb, M, N, K, epi, stream,
                                                paired_halves);
  else
    launch_gemm_tn<GemmSchedule::kPingPong>(a, lda, b, ldb, M, N, K, epi, stream, paired_halves);
}

}  // namespace fg::ops::detail::hopper
