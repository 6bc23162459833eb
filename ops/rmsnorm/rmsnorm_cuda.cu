// RMSNorm row kernels on the GPU, shared by rmsnorm, add_rmsnorm and
// rmsnorm_qkv_rope: forward (optionally with the residual add), apply (the
// normalized rows from a saved rstd) and backward (optionally writing the normalized
// rows again). Statistics in fp32 (f64 for f64); 64-bit offsets. Rows that move in
// 16-byte packs and fit in the registers of one block (D <= 8192 bf16, 4096 f32, 2048
// f64) take the register-resident kernels: every element is read once and written
// once. Other rows take the general kernels, which reread the row from L1/L2.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>
#include <type_traits>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/rmsnorm/rmsnorm.h"

namespace fg::ops::detail {
namespace {

constexpr int kWarp = 32;
constexpr int kForwardWarps = 4;         // forward: one warp per row, 4 rows per block
constexpr int kBackwardBlock = 256;      // backward: one block per group of rows
constexpr int kBackwardBlocksPerSm = 4;  // row groups per SM: each writes a dweight partial row
constexpr int kSumColumns = 32;          // partial-row sums: 32 columns x 32 row lanes per block
constexpr int kSumLanes = 32;
constexpr int kVecBytes = 16;     // one packed load or store
constexpr int kRowThreads = 256;  // register-resident rows: at most 256 threads per row,
constexpr int kMaxRowPacks = 4;   // each holding at most 4 packs of it
constexpr int kNarrowWarps = 4;   // narrow-row backward: rows (one per warp) per block
constexpr int kNarrowThreads = kWarp * kNarrowWarps;
constexpr int kDefaultSharedBytes = 48 * 1024;

// Statistics are kept in compute_t<T> (core/cuda_compute.cuh): fp32, or f64 for f64.
__device__ __forceinline__ float rsqrt_acc(float v) {
  return rsqrtf(v);
}
__device__ __forceinline__ double rsqrt_acc(double v) {
  return rsqrt(v);
}

// One warp per row. Pass 1 forms h (x + residual, rounded to T and stored, so the
// statistics and y describe exactly the h that backward will see) and its sum of
// squares; pass 2 rereads the row (now in L1/L2) and writes y = h * rstd * weight.
// With kHaveRstd the statistics are read instead: backward recomputing n.
template <class T, int kVec, bool kResidual, bool kHaveRstd>
__global__ void rmsnorm_forward_kernel(const T* x, const T* residual, const T* weight, T* h, T* y,
                                       compute_t<T>* rstd, int64_t rows, int64_t D, compute_t<T> eps) {
  using A = compute_t<T>;
  using WarpReduce = cub::WarpReduce<A>;
  __shared__ typename WarpReduce::TempStorage reduce_storage[kForwardWarps];
  const int64_t row = blockIdx.x * static_cast<int64_t>(kForwardWarps) + threadIdx.y;
  if (row >= rows) return;  // the whole warp leaves together
  const int64_t base = row * D;
  const T* src = x + base;  // the row's h
  A r;
  if constexpr (kHaveRstd) {
    r = rstd[row];
  } else {
    A ss = 0;
    for (int64_t c = threadIdx.x * kVec; c < D; c += kWarp * kVec) {
      Pack<T, kVec> hv = load_pack<kVec>(x + base + c);
      if constexpr (kResidual) {
        const Pack<T, kVec> rv = load_pack<kVec>(residual + base + c);
#pragma unroll
        for (int j = 0; j < kVec; ++j) hv.v[j] = from_compute<T>(to_compute(hv.v[j]) + to_compute(rv.v[j]));
        store_pack<kVec>(h + base + c, hv);
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const A v = to_compute(hv.v[j]);
        ss += v * v;
      }
    }
    ss = WarpReduce(reduce_storage[threadIdx.y]).Sum(ss);  // valid in lane 0
    r = rsqrt_acc(__shfl_sync(0xffffffffu, ss, 0) / static_cast<A>(D) + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    if constexpr (kResidual) src = h + base;  // this thread wrote these very elements
  }
  for (int64_t c = threadIdx.x * kVec; c < D; c += kWarp * kVec) {
    const Pack<T, kVec> hv = load_pack<kVec>(src + c), wv = load_pack<kVec>(weight + c);
    Pack<T, kVec> out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) out.v[j] = from_compute<T>(to_compute(hv.v[j]) * r * to_compute(wv.v[j]));
    store_pack<kVec>(y + base + c, out);
  }
}

// One block per group of rows (grid-stride over rows). Per row: a block-wide sum of
// g * xhat, then dx. Thread t owns the same columns in every row, so its dweight
// partial sums sit in shared memory without atomics; each block writes its partial
// row and sum_partial_rows_kernel adds them in a fixed order (deterministic).
// kY: also writes y = xhat * weight (the normalized rows, recomputed).
template <class T, int kVec, bool kDh, bool kY>
__global__ void __launch_bounds__(kBackwardBlock)
    rmsnorm_backward_kernel(const T* dy, const T* dh, const T* x, const T* weight,
                            const compute_t<T>* rstd, T* dx, T* y, compute_t<T>* partial, int64_t rows,
                            int64_t D) {
  using A = compute_t<T>;
  using BlockReduce = cub::BlockReduce<A, kBackwardBlock>;
  __shared__ typename BlockReduce::TempStorage reduce_storage;
  __shared__ A row_mean[2];  // alternating rows: one barrier per row suffices
  extern __shared__ __align__(16) unsigned char shared_raw[];
  A* dw = reinterpret_cast<A*>(shared_raw);  // (D) this block's dweight partial
  constexpr int64_t stride = static_cast<int64_t>(kBackwardBlock) * kVec;
  for (int64_t c = threadIdx.x * kVec; c < D; c += stride)
#pragma unroll
    for (int j = 0; j < kVec; ++j) dw[c + j] = 0;
  for (int64_t row = blockIdx.x, i = 0; row < rows; row += gridDim.x, ++i) {
    const int64_t base = row * D;
    const A r = rstd[row];
    A dot = 0;
    for (int64_t c = threadIdx.x * kVec; c < D; c += stride) {
      const Pack<T, kVec> dyv = load_pack<kVec>(dy + base + c), xv = load_pack<kVec>(x + base + c),
                          wv = load_pack<kVec>(weight + c);
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        dot += to_compute(wv.v[j]) * to_compute(dyv.v[j]) * (to_compute(xv.v[j]) * r);
    }
    // The sum is valid in thread 0, which shares it. The barrier also frees
    // reduce_storage for the next row, and row_mean[i % 2] is written again only two
    // rows on, after every thread has passed the next row's barrier.
    dot = BlockReduce(reduce_storage).Sum(dot);
    if (threadIdx.x == 0) row_mean[i % 2] = dot / static_cast<A>(D);
    __syncthreads();
    const A mean = row_mean[i % 2];
    for (int64_t c = threadIdx.x * kVec; c < D; c += stride) {
      const Pack<T, kVec> dyv = load_pack<kVec>(dy + base + c), xv = load_pack<kVec>(x + base + c),
                          wv = load_pack<kVec>(weight + c);
      Pack<T, kVec> dhv;
      if constexpr (kDh) dhv = load_pack<kVec>(dh + base + c);
      Pack<T, kVec> out, yv;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const A xhat = to_compute(xv.v[j]) * r, g = to_compute(wv.v[j]) * to_compute(dyv.v[j]);
        A v = r * (g - xhat * mean);
        if constexpr (kDh) v += to_compute(dhv.v[j]);
        out.v[j] = from_compute<T>(v);
        if constexpr (kY) yv.v[j] = from_compute<T>(xhat * to_compute(wv.v[j]));
        dw[c + j] += to_compute(dyv.v[j]) * xhat;
      }
      store_pack<kVec>(dx + base + c, out);
      if constexpr (kY) store_pack<kVec>(y + base + c, yv);
    }
  }
  for (int64_t c = threadIdx.x * kVec; c < D; c += stride)
#pragma unroll
    for (int j = 0; j < kVec; ++j) partial[blockIdx.x * D + c + j] = dw[c + j];
}

// The sum of v over the warp, the same bits in every lane (a butterfly).
template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The sum of v over the block, the same in every thread; the warps' sums are added in
// warp order (deterministic). sums[parity] alternates between calls, so one barrier per
// call is enough: a slot is written again only after every thread passed a later barrier.
template <class A>
__device__ __forceinline__ A block_sum(A v, A (*sums)[kWarp], int parity) {
  v = warp_sum(v);
  if (threadIdx.x % kWarp == 0) sums[parity][threadIdx.x / kWarp] = v;
  __syncthreads();
  A s = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / kWarp); ++w) s += sums[parity][w];
  return s;
}

// Register-resident forward: one block per row (grid-stride). Thread t holds packs t,
// t + blockDim, ... of the row, so x and residual are read once, h and y written once,
// and the weight is loaded once per block.
template <class T, int kVec, int kPacks, bool kResidual>
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_forward_rows_kernel(const T* x, const T* residual, const T* weight, T* h, T* y,
                                compute_t<T>* rstd, int64_t rows, int64_t D, compute_t<T> eps) {
  using A = compute_t<T>;
  using P = Pack<T, kVec>;
  __shared__ A sums[2][kWarp];
  const int64_t packs = D / kVec;
  P w[kPacks];
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t c = threadIdx.x + p * static_cast<int64_t>(blockDim.x);
    if (c < packs) w[p] = load_pack<kVec>(weight + c * kVec);
  }
  // Every load of a row issued before the first use; with kAhead the next row's loads are
  // issued before this row's block sum (two rows in flight per block), as in backward.
  constexpr bool kAhead = kPacks <= 2;
  P hv[kPacks], rv[kPacks], next_h[kPacks], next_r[kPacks];
  const auto load_row = [&](P(&hp)[kPacks], P(&rp)[kPacks], int64_t row) {
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t c = threadIdx.x + p * static_cast<int64_t>(blockDim.x);
      if (c < packs) {
        hp[p] = load_pack<kVec>(x + row * D + c * kVec);
        if constexpr (kResidual) rp[p] = load_pack<kVec>(residual + row * D + c * kVec);
      }
    }
  };
  if (kAhead && blockIdx.x < rows) load_row(hv, rv, blockIdx.x);
  int parity = 0;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x, parity ^= 1) {
    const int64_t base = row * D;
    if (!kAhead) load_row(hv, rv, row);
    A ss = 0;
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t c = threadIdx.x + p * static_cast<int64_t>(blockDim.x);
      if (c >= packs) continue;
      if constexpr (kResidual) {  // h rounded to T, as stored and as backward sees it
#pragma unroll
        for (int j = 0; j < kVec; ++j)
          hv[p].v[j] = from_compute<T>(to_compute(hv[p].v[j]) + to_compute(rv[p].v[j]));
        store_pack<kVec>(h + base + c * kVec, hv[p]);
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) ss += to_compute(hv[p].v[j]) * to_compute(hv[p].v[j]);
    }
    if (kAhead && row + gridDim.x < rows) load_row(next_h, next_r, row + gridDim.x);
    const A r = rsqrt_acc(block_sum(ss, sums, parity) / static_cast<A>(D) + eps);
    if (threadIdx.x == 0) rstd[row] = r;
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t c = threadIdx.x + p * static_cast<int64_t>(blockDim.x);
      if (c >= packs) continue;
      P out;
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        out.v[j] = from_compute<T>(to_compute(hv[p].v[j]) * r * to_compute(w[p].v[j]));
      store_pack<kVec>(y + base + c * kVec, out);
    }
    if (kAhead) {
#pragma unroll
      for (int p = 0; p < kPacks; ++p) {
        hv[p] = next_h[p];
        rv[p] = next_r[p];
      }
    }
  }
}

// A thread's packs of one row for the register-resident backward: first, first + step, ...
// (kPacks of them) of dy, x (and dh).
template <class T, int kVec, int kPacks, bool kDh>
struct BackwardPacks {
  Pack<T, kVec> dy[kPacks], x[kPacks], dh[kPacks];

  // Every load issued before any is used.
  __device__ __forceinline__ void load(const T* dy_row, const T* dh_row, const T* x_row,
                                       int64_t packs, int first, int step) {
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t c = first + p * static_cast<int64_t>(step);
      if (c < packs) {
        dy[p] = load_pack<kVec>(dy_row + c * kVec);
        x[p] = load_pack<kVec>(x_row + c * kVec);
        if constexpr (kDh) dh[p] = load_pack<kVec>(dh_row + c * kVec);
      }
    }
  }
};

// One row of the register-resident backward from the calling thread's loaded packs;
// row_sum(v) adds v over the row's threads, and before_sum() runs just before it (a
// caller's chance to issue the next row's loads, whose latency then hides under the
// sum). Writes dx (and y: the normalized row, recomputed) once and adds the row's
// dy * xhat into the thread's dweight sums dw.
template <class T, int kVec, int kPacks, bool kDh, bool kY, class RowSum, class BeforeSum>
__device__ __forceinline__ void backward_row(const BackwardPacks<T, kVec, kPacks, kDh>& v,
                                             const Pack<T, kVec> (&w)[kPacks], compute_t<T> r,
                                             T* dx, T* y, compute_t<T> (&dw)[kPacks][kVec],
                                             int64_t D, int first, int step, RowSum row_sum,
                                             BeforeSum before_sum) {
  using A = compute_t<T>;
  using P = Pack<T, kVec>;
  const int64_t packs = D / kVec;
  A dot = 0;  // sum over the row of g * xhat
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t c = first + p * static_cast<int64_t>(step);
    if (c >= packs) continue;
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      dot += to_compute(w[p].v[j]) * to_compute(v.dy[p].v[j]) * (to_compute(v.x[p].v[j]) * r);
  }
  before_sum();
  const A mean = row_sum(dot) / static_cast<A>(D);
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t c = first + p * static_cast<int64_t>(step);
    if (c >= packs) continue;
    P out, yv;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const A xhat = to_compute(v.x[p].v[j]) * r,
              g = to_compute(w[p].v[j]) * to_compute(v.dy[p].v[j]);
      A o = r * (g - xhat * mean);
      if constexpr (kDh) o += to_compute(v.dh[p].v[j]);
      out.v[j] = from_compute<T>(o);
      if constexpr (kY) yv.v[j] = from_compute<T>(xhat * to_compute(w[p].v[j]));
      dw[p][j] += to_compute(v.dy[p].v[j]) * xhat;
    }
    store_pack<kVec>(dx + c * kVec, out);
    if constexpr (kY) store_pack<kVec>(y + c * kVec, yv);
  }
}

// The weight's packs first, first + step, ... of a row, loaded once per thread.
template <class T, int kVec, int kPacks>
__device__ __forceinline__ void load_weight_packs(const T* weight, Pack<T, kVec> (&w)[kPacks],
                                                  int64_t packs, int first, int step) {
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t c = first + p * static_cast<int64_t>(step);
    if (c < packs) w[p] = load_pack<kVec>(weight + c * kVec);
  }
}

// Register-resident backward: one block per row (grid-stride). Each thread keeps its
// columns' dweight sums in registers over all its rows and writes them as the block's
// partial row at the end (added in order by sum_partial_rows_kernel).
template <class T, int kVec, int kPacks, bool kDh, bool kY>
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_backward_rows_kernel(const T* dy, const T* dh, const T* x, const T* weight,
                                 const compute_t<T>* rstd, T* dx, T* y, compute_t<T>* partial,
                                 int64_t rows, int64_t D) {
  using A = compute_t<T>;
  __shared__ A sums[2][kWarp];
  const int64_t packs = D / kVec;
  Pack<T, kVec> w[kPacks];
  A dw[kPacks][kVec] = {};
  load_weight_packs(weight, w, packs, threadIdx.x, blockDim.x);
  // A row's sum waits on a block barrier, so the next row's loads are issued before it
  // (two rows in flight per block). Not at 3 or 4 packs a thread: the second row's
  // registers would halve the blocks per SM.
  constexpr bool kAhead = kPacks <= 2;
  BackwardPacks<T, kVec, kPacks, kDh> cur, next;
  const auto load_row = [&](BackwardPacks<T, kVec, kPacks, kDh>& v, int64_t row) {
    const int64_t base = row * D;
    v.load(dy + base, kDh ? dh + base : nullptr, x + base, packs, threadIdx.x, blockDim.x);
  };
  if (kAhead && blockIdx.x < rows) load_row(cur, blockIdx.x);
  int parity = 0;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x, parity ^= 1) {
    const int64_t base = row * D;
    const int64_t following = row + gridDim.x;
    if (!kAhead) load_row(cur, row);
    backward_row<T, kVec, kPacks, kDh, kY>(
        cur, w, rstd[row], dx + base, kY ? y + base : nullptr, dw, D, threadIdx.x, blockDim.x,
        [&](A v) { return block_sum(v, sums, parity); },
        [&] {
          if (kAhead && following < rows) load_row(next, following);
        });
    if (kAhead) cur = next;
  }
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t c = threadIdx.x + p * static_cast<int64_t>(blockDim.x);
    if (c >= packs) continue;
#pragma unroll
    for (int j = 0; j < kVec; ++j) partial[blockIdx.x * D + c * kVec + j] = dw[p][j];
  }
}

// Narrow rows (at most kWarp * kMaxRowPacks packs): one warp per row, so a row needs no
// block barrier, and a block's kNarrowWarps warps write one partial row between them
// (a block per 768-wide row left 2,772 partial rows to sum at GPT-2-small's shape). Lane
// l holds packs l, l + 32, ... of its rows; at the end the warps' dweight sums meet in
// shared memory and are added in warp order into the block's partial row.
template <class T, int kVec, int kPacks, bool kDh, bool kY>
__global__ void __launch_bounds__(kNarrowThreads)
    rmsnorm_backward_narrow_kernel(const T* dy, const T* dh, const T* x, const T* weight,
                                   const compute_t<T>* rstd, T* dx, T* y, compute_t<T>* partial,
                                   int64_t rows, int64_t D) {
  using A = compute_t<T>;
  extern __shared__ __align__(16) unsigned char shared_raw[];
  A* warp_dw = reinterpret_cast<A*>(shared_raw);  // (kNarrowWarps, D)
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t packs = D / kVec;
  Pack<T, kVec> w[kPacks];
  A dw[kPacks][kVec] = {};
  load_weight_packs(weight, w, packs, lane, kWarp);
  const int64_t step = static_cast<int64_t>(gridDim.x) * kNarrowWarps;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kNarrowWarps) + warp; row < rows;
       row += step) {
    const int64_t base = row * D;
    BackwardPacks<T, kVec, kPacks, kDh> v;
    v.load(dy + base, kDh ? dh + base : nullptr, x + base, packs, lane, kWarp);
    backward_row<T, kVec, kPacks, kDh, kY>(
        v, w, rstd[row], dx + base, kY ? y + base : nullptr, dw, D, lane, kWarp,
        [](A s) { return warp_sum(s); }, [] {});
  }
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t c = lane + p * static_cast<int64_t>(kWarp);
    if (c >= packs) continue;
#pragma unroll
    for (int j = 0; j < kVec; ++j) warp_dw[warp * D + c * kVec + j] = dw[p][j];
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
    A sum = 0;
    for (int i = 0; i < kNarrowWarps; ++i) sum += warp_dw[i * D + c];
    partial[blockIdx.x * D + c] = sum;
  }
}

// out[c] = the sum of partial[g][c] over groups g. 32 row lanes per column keep many
// loads in flight; the lanes' sums are added in lane order, so the result is the same
// every run.
template <class T>
__global__ void sum_partial_rows_kernel(const compute_t<T>* partial, int64_t groups, int64_t n,
                                        T* out, bool add) {
  using A = compute_t<T>;
  __shared__ A lane_sums[kSumLanes][kSumColumns + 1];  // +1: no bank conflicts reading a column
  const int64_t c = blockIdx.x * static_cast<int64_t>(kSumColumns) + threadIdx.x;
  A s = 0;
  if (c < n) {
#pragma unroll 4
    for (int64_t g = threadIdx.y; g < groups; g += kSumLanes) s += partial[g * n + c];
  }
  lane_sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || c >= n) return;
  for (int l = 1; l < kSumLanes; ++l) s += lane_sums[l][threadIdx.x];
  if (add) s += to_compute(out[c]);
  out[c] = from_compute<T>(s);
}

// Runs f.template operator()<T>() for the tensor dtypes the GPU kernels take.
template <class F>
void dispatch_gpu_float(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32:
      return f.template operator()<float>();
    case DType::F64:
      return f.template operator()<double>();
    case DType::BF16:
      return f.template operator()<bf16>();
    default:
      FG_THROW(op, ": dtype ", dtype_name(dtype), " is not supported on the GPU");
  }
}

// Rows of D elements can move in 16-byte packs when D is a multiple of the pack
// and every row pointer starts on a 16-byte boundary.
template <class T>
bool packable(int64_t D, std::initializer_list<const void*> ptrs) {
  if (D % kPackOf<T> != 0) return false;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % kVecBytes != 0) return false;
  return true;
}

template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// A register-resident row: threads per row and packs per thread (the fewest, up to
// kMaxRowPacks), or packs_per_thread 0 when the row does not fit.
struct RowPlan {
  int threads = 0, packs_per_thread = 0;
};
template <class T>
RowPlan row_plan(int64_t D) {
  const int64_t packs = D / kPackOf<T>;
  for (int k = 1; k <= kMaxRowPacks; ++k)
    if (packs <= int64_t{k} * kRowThreads)
      return {static_cast<int>((packs + k - 1) / k + kWarp - 1) / kWarp * kWarp, k};
  return {};
}

// Runs f.template operator()<kPacks>() for packs per thread from 1 to kMaxRowPacks.
template <class F>
void with_packs(int64_t packs_per_thread, F&& f) {
  switch (packs_per_thread) {
    case 1:
      return f.template operator()<1>();
    case 2:
      return f.template operator()<2>();
    case 3:
      return f.template operator()<3>();
    default:
      return f.template operator()<kMaxRowPacks>();
  }
}

// One wave of blocks: as many as fit on the GPU at once, at most `blocks`.
template <class K>
int64_t row_blocks(K kernel, int threads, int64_t blocks, int device, size_t shared = 0) {
  int sms = 0, per_sm = 0;
  FG_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FG_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared));
  return std::min<int64_t>(blocks, int64_t{std::max(per_sm, 1)} * sms);
}

template <class T, bool kResidual, bool kHaveRstd>
void launch_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps,
                    const Tensor& h, const Tensor& y, const Tensor& rstd) {
  using A = compute_t<T>;
  const int64_t D = weight.numel(), rows = x.numel() / D;
  if (rows == 0) return;
  const T* px = x.data<T>();
  const T* pres = ptr_or_null<T>(residual);
  const T* pw = weight.data<T>();
  T* ph = kResidual ? h.data<T>() : nullptr;
  T* py = y.data<T>();
  A* pr = rstd.data<A>();
  const bool packed = packable<T>(D, {px, pres, pw, ph, py});
  const RowPlan plan = packed && !kHaveRstd ? row_plan<T>(D) : RowPlan{};
  if (plan.packs_per_thread > 0) {
    with_packs(plan.packs_per_thread, [&]<int kPacks>() {
      auto kernel = rmsnorm_forward_rows_kernel<T, kPackOf<T>, kPacks, kResidual>;
      const int64_t grid = row_blocks(kernel, plan.threads, rows, x.device().index);
      kernel<<<static_cast<unsigned>(grid), plan.threads, 0, cuda::stream()>>>(
          px, pres, pw, ph, py, pr, rows, D, static_cast<A>(eps));
    });
  } else {
    const dim3 block(kWarp, kForwardWarps);
    const unsigned grid = cuda::grid_for(rows, kForwardWarps);
    if (packed) {
      rmsnorm_forward_kernel<T, kPackOf<T>, kResidual, kHaveRstd>
          <<<grid, block, 0, cuda::stream()>>>(px, pres, pw, ph, py, pr, rows, D,
                                               static_cast<A>(eps));
    } else {
      rmsnorm_forward_kernel<T, 1, kResidual, kHaveRstd><<<grid, block, 0, cuda::stream()>>>(
          px, pres, pw, ph, py, pr, rows, D, static_cast<A>(eps));
    }
  }
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void launch_sum_partial_rows(const Tensor& partial, const Tensor& out, bool add) {
  const int64_t groups = partial.size(0), n = partial.size(1);
  if (n == 0) return;
  const dim3 block(kSumColumns, kSumLanes);
  sum_partial_rows_kernel<T><<<cuda::grid_for(n, kSumColumns), block, 0, cuda::stream()>>>(
      partial.data<compute_t<T>>(), groups, n, out.data<T>(), add);
  FG_CUDA_CHECK(cudaGetLastError());
}

// The general backward: the dweight partial (D) in dynamic shared memory.
template <class T, int kVec, bool kDh, bool kY>
Tensor launch_backward_shared(const Tensor& dy, const Tensor& dh, const Tensor& x,
                              const Tensor& weight, const Tensor& rstd, const Tensor& dx,
                              const Tensor& y) {
  using A = compute_t<T>;
  const int64_t D = weight.numel(), rows = x.numel() / D;
  const int device = x.device().index;
  auto kernel = rmsnorm_backward_kernel<T, kVec, kDh, kY>;
  const size_t shared = static_cast<size_t>(D) * sizeof(A);
  int max_shared = 0;
  FG_CUDA_CHECK(
      cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attr{};
  FG_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  FG_CHECK(shared + attr.sharedSizeBytes <= static_cast<size_t>(max_shared),
           "rmsnorm_backward: rows of ", D, " elements need ", shared + attr.sharedSizeBytes,
           " bytes of shared memory per block, more than this GPU's ", max_shared);
  if (shared > static_cast<size_t>(kDefaultSharedBytes))
    FG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(shared)));
  // Up to kBackwardBlocksPerSm row groups per SM (as many as fit), at most one per row:
  // enough loads in flight, and few partial rows for the dweight sum.
  int sms = 0, per_sm = 0;
  FG_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FG_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kBackwardBlock, shared));
  per_sm = std::clamp(per_sm, 1, kBackwardBlocksPerSm);
  const int64_t groups = std::min<int64_t>(rows, static_cast<int64_t>(per_sm) * sms);
  Tensor partial = Tensor::empty({groups, D}, rmsnorm_stat_dtype(x.dtype()), x.device());
  kernel<<<static_cast<unsigned>(groups), kBackwardBlock, shared, cuda::stream()>>>(
      dy.data<T>(), ptr_or_null<T>(dh), x.data<T>(), weight.data<T>(), rstd.data<A>(), dx.data<T>(),
      kY ? y.data<T>() : nullptr, partial.data<A>(), rows, D);
  FG_CUDA_CHECK(cudaGetLastError());
  return partial;
}

// Returns the (groups, D) dweight partial sums, for sum_partial_rows_cuda to finish.
template <class T, bool kDh, bool kY>
Tensor launch_backward(const Tensor& dy, const Tensor& dh, const Tensor& x, const Tensor& weight,
                       const Tensor& rstd, const Tensor& dx, const Tensor& y) {
  using A = compute_t<T>;
  const int64_t D = weight.numel(), rows = x.numel() / D;
  const bool packed =
      packable<T>(D, {dy.raw_data(), kDh ? dh.raw_data() : nullptr, x.raw_data(), weight.raw_data(),
                      dx.raw_data(), kY ? y.raw_data() : nullptr});
  const RowPlan plan = packed ? row_plan<T>(D) : RowPlan{};
  const int64_t lane_packs = (D / kPackOf<T> + kWarp - 1) / kWarp;
  Tensor partial;  // (groups, D) dweight sums of each block's rows
  if (packed && lane_packs <= kMaxRowPacks) {
    with_packs(lane_packs, [&]<int kPacks>() {
      auto kernel = rmsnorm_backward_narrow_kernel<T, kPackOf<T>, kPacks, kDh, kY>;
      const int threads = kNarrowThreads;
      const size_t shared = static_cast<size_t>(kNarrowWarps * D) * sizeof(A);
      const int64_t grid = row_blocks(kernel, threads, (rows + kNarrowWarps - 1) / kNarrowWarps,
                                      x.device().index, shared);
      partial = Tensor::empty({grid, D}, rmsnorm_stat_dtype(x.dtype()), x.device());
      kernel<<<static_cast<unsigned>(grid), threads, shared, cuda::stream()>>>(
          dy.data<T>(), ptr_or_null<T>(dh), x.data<T>(), weight.data<T>(), rstd.data<A>(),
          dx.data<T>(), kY ? y.data<T>() : nullptr, partial.data<A>(), rows, D);
      FG_CUDA_CHECK(cudaGetLastError());
    });
  } else if (plan.packs_per_thread > 0) {
    with_packs(plan.packs_per_thread, [&]<int kPacks>() {
      auto kernel = rmsnorm_backward_rows_kernel<T, kPackOf<T>, kPacks, kDh, kY>;
      const int64_t grid = row_blocks(kernel, plan.threads, rows, x.device().index);
      partial = Tensor::empty({grid, D}, rmsnorm_stat_dtype(x.dtype()), x.device());
      kernel<<<static_cast<unsigned>(grid), plan.threads, 0, cuda::stream()>>>(
          dy.data<T>(), ptr_or_null<T>(dh), x.data<T>(), weight.data<T>(), rstd.data<A>(),
          dx.data<T>(), kY ? y.data<T>() : nullptr, partial.data<A>(), rows, D);
      FG_CUDA_CHECK(cudaGetLastError());
    });
  } else if (packed) {
    partial = launch_backward_shared<T, kPackOf<T>, kDh, kY>(dy, dh, x, weight, rstd, dx, y);
  } else {
    partial = launch_backward_shared<T, 1, kDh, kY>(dy, dh, x, weight, rstd, dx, y);
  }
  return partial;
}

}  // namespace

void rmsnorm_rows_forward_cuda(const Tensor& x, const Tensor& residual, const Tensor& weight,
                               double eps, const Tensor& h, const Tensor& y, const Tensor& rstd) {
  dispatch_gpu_float("rmsnorm", x.dtype(), [&]<class T>() {
    if (residual.defined()) {
      launch_forward<T, true, false>(x, residual, weight, eps, h, y, rstd);
    } else {
      launch_forward<T, false, false>(x, residual, weight, eps, h, y, rstd);
    }
  });
}

void rmsnorm_rows_apply_cuda(const Tensor& x, const Tensor& weight, const Tensor& rstd,
                             const Tensor& y) {
  dispatch_gpu_float("rmsnorm", x.dtype(), [&]<class T>() {
    launch_forward<T, false, true>(x, Tensor(), weight, 0.0, Tensor(), y, rstd);
  });
}

void rmsnorm_rows_backward_cuda(const Tensor& dy, const Tensor& dh, const Tensor& x,
                                const Tensor& weight, const Tensor& rstd, const Tensor& dx,
                                const Tensor& dweight, const Tensor& y, bool dweight_add) {
  const int64_t rows = x.numel() / weight.numel();
  if (rows == 0) {
    if (!dweight_add) dweight.zero_();
    return;
  }
  Tensor partial;
  dispatch_gpu_float("rmsnorm_backward", x.dtype(), [&]<class T>() {
    auto with_dh = [&]<bool kY>() {
      return dh.defined() ? launch_backward<T, true, kY>(dy, dh, x, weight, rstd, dx, y)
                          : launch_backward<T, false, kY>(dy, dh, x, weight, rstd, dx, y);
    };
    partial =
        y.defined() ? with_dh.template operator()<true>() : with_dh.template operator()<false>();
  });
  // In dweight's dtype: a bf16 weight's f32 master gradient takes the fp32 sums unrounded.
  sum_partial_rows_cuda(partial, dweight, dweight_add);
}

void sum_partial_rows_cuda(const Tensor& partial, const Tensor& out, bool add) {
  dispatch_gpu_float("sum_partial_rows", out.dtype(),
                     [&]<class T>() { launch_sum_partial_rows<T>(partial, out, add); });
}

}  // namespace fg::ops::detail
