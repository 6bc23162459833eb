// RoPE on the GPU: one launch moves up to three segments of heads (q and k rotated,
// v copied) between packed-head layouts, so the fused layer splits its q|k rows into
// q and k, and packs dq/dk/dv back into dqkv, without a separate copy. The backward
// pack also sums the columns (the bias gradient) on the way. Angles in fp32 (f64 for
// f64) from the same double-precision inverse frequencies as the CPU; 16-byte accesses
// whenever the layout allows them.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/rmsnorm/rmsnorm.h"
#include "ops/rope/rope.h"

namespace fg::ops::detail {
namespace {

constexpr int kBlock = 256;             // threads; each owns one item (below) of a row
constexpr int kRowUnroll = 4;           // rows loaded before the first is used
constexpr int kMaxChunkRows = 64;       // rows whose angles sit in shared memory at once:
constexpr int kTableBytes = 32 * 1024;  // usually all of a block's rows, one table fill
constexpr int kVecBytes = 16;           // one packed load or store
constexpr int kDefaultSharedBytes = 48 * 1024;

__device__ __forceinline__ void sincos_of(float a, float* s, float* c) {
  sincosf(a, s, c);
}
__device__ __forceinline__ void sincos_of(double a, double* s, double* c) {
  sincos(a, s, c);
}

// One segment: `heads` packed heads of hd elements per token, at in + b*in_sb + t*in_st.
// A row (token) of a segment is cut into items, one per thread: in a rotated head,
// `pairs` items each rotate the packs at i*kVec and i*kVec + half, and the rest copy
// one pass-through pack each (dims >= rotary_dim); a copied head is all copy items.
template <class T>
struct SegmentArgs {
  const T* in;
  T* out;
  int64_t in_sb, in_st, out_sb, out_st;
  int64_t col0;  // the segment's first column among the column sums
  int heads;
  int items_per_head;
  bool rotate;
};

template <class T>
struct RopeArgs {
  SegmentArgs<T> seg[kMaxRopeSegments];
  int num_segments;
  int items;            // per row, over all segments
  int items_per_block;  // blockIdx.y picks which of them a block owns
  int lanes;            // rows a block walks side by side: kBlock / items_per_block
  int pairs;            // half / kVec
  int chunk_rows;
  int64_t rows, seq, hd, half, rows_per_block, columns;
  const int32_t* positions;  // (T) or (B, T)
  bool per_batch, inverse, table;
  double log2_theta;
  compute_t<T>* partial;  // (gridDim.x, columns) column sums per row range, or null
};

// Shared memory of one block: the inverse frequencies, the chunk's cos/sin table and
// each chunk row's (b, t); after the rows, the column sums of all lanes.
template <class T>
struct SharedLayout {
  int64_t inv, cos, sin, bt, bytes;
  SharedLayout(int64_t half, int64_t chunk_rows, int kVec, bool sums) {
    const int64_t a = sizeof(compute_t<T>);
    inv = 0;
    cos = inv + half * a;
    sin = cos + chunk_rows * half * a;
    bt = (sin + chunk_rows * half * a + 7) / 8 * 8;
    bytes = std::max<int64_t>(bt + chunk_rows * 8, sums ? int64_t{kBlock} * 2 * kVec * a : 0);
  }
};

// kSums: the column sums are wanted (a.partial is set).
template <class T, int kVec, bool kSums>
__global__ void __launch_bounds__(kBlock) rope_kernel(const RopeArgs<T> a, SharedLayout<T> lay) {
  using A = compute_t<T>;
  using P = Pack<T, kVec>;
  extern __shared__ __align__(16) unsigned char shared_raw[];
  A* inv_freq = reinterpret_cast<A*>(shared_raw + lay.inv);  // (half)
  A* cos_t = reinterpret_cast<A*>(shared_raw + lay.cos);     // (chunk_rows, half)
  A* sin_t = reinterpret_cast<A*>(shared_raw + lay.sin);  // (chunk_rows, half), negated for inverse
  int2* bt = reinterpret_cast<int2*>(shared_raw + lay.bt);  // (chunk_rows) the row's (b, t)

  const int local = threadIdx.x % a.items_per_block, lane = threadIdx.x / a.items_per_block;
  const int item = blockIdx.y * a.items_per_block + local;
  const bool active = lane < a.lanes && item < a.items;

  // Which segment, head and columns this thread's item covers. Static indices into the
  // parameter array keep it out of local memory.
  SegmentArgs<T> seg = a.seg[0];
  int rest = active ? item : 0;
#pragma unroll
  for (int s = 1; s < kMaxRopeSegments; ++s) {
    if (s < a.num_segments && rest >= seg.heads * seg.items_per_head) {
      rest -= seg.heads * seg.items_per_head;
      seg = a.seg[s];
    }
  }
  const int head = rest / seg.items_per_head, i = rest % seg.items_per_head;
  const bool pair = seg.rotate && i < a.pairs;
  const int64_t freq = static_cast<int64_t>(i) * kVec;  // first frequency of a pair item
  const int64_t col =
      head * a.hd + (pair ? freq : (seg.rotate ? 2 * a.half + (i - a.pairs) * kVec : freq));

  if (a.table)
    for (int64_t f = threadIdx.x; f < a.half; f += kBlock)
      inv_freq[f] = static_cast<A>(rope_inv_freq(f, 2 * a.half, a.log2_theta));

  A sums[2 * kVec] = {};  // column sums: [0, kVec) at col, [kVec, 2 kVec) at col + half
  const int64_t row_begin = blockIdx.x * a.rows_per_block;
  const int64_t row_end = min(a.rows, row_begin + a.rows_per_block);
  for (int64_t chunk = row_begin; chunk < row_end; chunk += a.chunk_rows) {
    const int n = static_cast<int>(min(static_cast<int64_t>(a.chunk_rows), row_end - chunk));
    __syncthreads();  // the previous chunk's table is no longer read (and inv_freq is ready)
    for (int r = threadIdx.x; r < n; r += kBlock) {
      const int64_t row = chunk + r;
      bt[r] = make_int2(static_cast<int>(row / a.seq), static_cast<int>(row % a.seq));
    }
    __syncthreads();
    if (a.table) {
      // One angle per (row, frequency), shared by every head of the row.
      const int entries = n * static_cast<int>(a.half);
      for (int j = threadIdx.x; j < entries; j += kBlock) {
        const int r = j / static_cast<int>(a.half), f = j - r * static_cast<int>(a.half);
        const A p = static_cast<A>(a.positions[a.per_batch ? chunk + r : bt[r].y]);
        A sn, cs;
        sincos_of(p * inv_freq[f], &sn, &cs);
        cos_t[j] = cs;
        sin_t[j] = a.inverse ? -sn : sn;
      }
    }
    __syncthreads();
    if (!active) continue;
    for (int r0 = lane; r0 < n; r0 += a.lanes * kRowUnroll) {
      // Every load of kRowUnroll rows is issued before the first is used.
      P x1[kRowUnroll], x2[kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int r = r0 + u * a.lanes;
        if (r < n) {
          const int2 p = bt[r];
          const T* in = seg.in + p.x * seg.in_sb + p.y * seg.in_st + col;
          x1[u] = *reinterpret_cast<const P*>(in);
          if (pair) x2[u] = *reinterpret_cast<const P*>(in + a.half);
        }
      }
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int r = r0 + u * a.lanes;
        if (r >= n) continue;
        const int2 p = bt[r];
        A y1[kVec], y2[kVec];
        if (pair) {
          const A* cs = cos_t + r * a.half + freq;
          const A* sn = sin_t + r * a.half + freq;
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            const A v1 = to_compute(x1[u].v[e]), v2 = to_compute(x2[u].v[e]);
            y1[e] = v1 * cs[e] - v2 * sn[e];
            y2[e] = v2 * cs[e] + v1 * sn[e];
          }
        } else {
#pragma unroll
          for (int e = 0; e < kVec; ++e) y1[e] = to_compute(x1[u].v[e]);
        }
        if constexpr (kSums) {
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            sums[e] += y1[e];
            if (pair) sums[kVec + e] += y2[e];
          }
        }
        T* out = seg.out + p.x * seg.out_sb + p.y * seg.out_st + col;
        P o;
#pragma unroll
        for (int e = 0; e < kVec; ++e) o.v[e] = from_compute<T>(y1[e]);
        *reinterpret_cast<P*>(out) = o;
        if (pair) {
#pragma unroll
          for (int e = 0; e < kVec; ++e) o.v[e] = from_compute<T>(y2[e]);
          *reinterpret_cast<P*>(out + a.half) = o;
        }
      }
    }
  }
  if constexpr (!kSums) return;
  // The lanes' column sums, added in lane order (deterministic), one partial row per
  // block row range. The shared memory is free once every lane has passed the barrier.
  A* red = reinterpret_cast<A*>(shared_raw);  // (lanes, items_per_block, 2 kVec)
  __syncthreads();
  if (active)
#pragma unroll
    for (int e = 0; e < 2 * kVec; ++e)
      red[(static_cast<int64_t>(lane) * a.items_per_block + local) * 2 * kVec + e] = sums[e];
  __syncthreads();
  if (!active || lane != 0) return;
  for (int l = 1; l < a.lanes; ++l)
#pragma unroll
    for (int e = 0; e < 2 * kVec; ++e)
      sums[e] += red[(static_cast<int64_t>(l) * a.items_per_block + local) * 2 * kVec + e];
  A* part = a.partial + blockIdx.x * a.columns + seg.col0 + col;
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    part[e] = sums[e];
    if (pair) part[a.half + e] = sums[kVec + e];
  }
}

// 16-byte packs need every row start, head and half-rotation boundary on a pack.
template <class T>
bool packable(const std::vector<RopeSegment>& segments, int64_t hd, int64_t half, bool rotate) {
  constexpr int64_t vec = kVecBytes / sizeof(T);
  if (hd % vec != 0 || (rotate && half % vec != 0)) return false;
  for (const RopeSegment& s : segments) {
    for (const Tensor* t : {&s.in, &s.out}) {
      if (!t->starts_aligned(kVecBytes)) return false;
      if (t->strides()[0] % vec != 0 || t->strides()[1] % vec != 0) return false;
    }
  }
  return true;
}

template <class T, int kVec>
void launch_rope(const std::vector<RopeSegment>& segments, const Tensor& positions,
                 int64_t rotary_dim, double theta, bool inverse, const RopeExtras& extras) {
  using A = compute_t<T>;
  const Tensor& first = segments[0].in;
  RopeArgs<T> a{};
  a.hd = first.size(3);
  a.half = rotary_dim / 2;
  a.pairs = static_cast<int>(a.half / kVec);
  a.num_segments = static_cast<int>(segments.size());
  int64_t col0 = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const RopeSegment& s = segments[i];
    const int per_head = static_cast<int>(s.rotate ? (a.hd - a.half) / kVec : a.hd / kVec);
    a.seg[i] = {s.in.data<T>(),
                s.out.data<T>(),
                s.in.strides()[0],
                s.in.strides()[1],
                s.out.strides()[0],
                s.out.strides()[1],
                col0,
                static_cast<int>(s.in.size(2)),
                per_head,
                s.rotate};
    a.items += a.seg[i].heads * per_head;
    a.table = a.table || (s.rotate && a.half > 0);
    col0 += s.in.size(2) * a.hd;
  }
  a.columns = col0;
  a.seq = first.size(1);
  a.rows = first.size(0) * a.seq;
  a.positions = positions.data<int32_t>();
  a.per_batch = positions.dim() == 2;
  a.inverse = inverse;
  a.log2_theta = std::log2(theta);
  if (a.items == 0 || a.rows == 0) return;

  a.chunk_rows = a.table ? static_cast<int>(std::clamp<int64_t>(
                               kTableBytes / (2 * a.half * int64_t{sizeof(A)}), 1, kMaxChunkRows))
                         : kMaxChunkRows;
  const SharedLayout<T> lay(a.table ? a.half : 0, a.chunk_rows, kVec, extras.column_sums.defined());
  auto kernel =
      extras.column_sums.defined() ? rope_kernel<T, kVec, true> : rope_kernel<T, kVec, false>;
  if (lay.bytes > kDefaultSharedBytes)
    FG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(lay.bytes)));

  // Grid: blockIdx.y splits a row's items into blocks of at most kBlock; a narrow row
  // puts several rows (lanes) side by side in one block. blockIdx.x splits the rows into
  // ranges: one wave of blocks, as many as fit on the GPU at once.
  a.items_per_block = std::min(a.items, kBlock);
  a.lanes = kBlock / a.items_per_block;
  const int64_t grid_y = (a.items + a.items_per_block - 1) / a.items_per_block;
  int sms = 0, per_sm = 0;
  FG_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, first.device().index));
  FG_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kBlock,
                                                              static_cast<size_t>(lay.bytes)));
  const int64_t wave = int64_t{sms} * std::max(per_sm, 1);
  const int64_t want_x = std::max<int64_t>(1, (wave + grid_y - 1) / grid_y);
  a.rows_per_block = (a.rows + want_x - 1) / want_x;
  const int64_t grid_x = (a.rows + a.rows_per_block - 1) / a.rows_per_block;

  Tensor partial;
  if (extras.column_sums.defined()) {
    partial =
        Tensor::empty(Shape{grid_x, a.columns}, rmsnorm_stat_dtype(first.dtype()), first.device());
    a.partial = partial.data<A>();
  }
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  kernel<<<grid, kBlock, static_cast<size_t>(lay.bytes), cuda::stream()>>>(a, lay);
  FG_CUDA_CHECK(cudaGetLastError());
  if (partial.defined()) sum_partial_rows_cuda(partial, extras.column_sums);
}

template <class T>
void dispatch_width(const std::vector<RopeSegment>& segments, const Tensor& positions,
                    int64_t rotary_dim, double theta, bool inverse, const RopeExtras& extras) {
  bool rotate = false;
  for (const RopeSegment& s : segments) rotate = rotate || s.rotate;
  if (packable<T>(segments, segments[0].in.size(3), rotary_dim / 2, rotate)) {
    launch_rope<T, kVecBytes / sizeof(T)>(segments, positions, rotary_dim, theta, inverse, extras);
  } else {
    launch_rope<T, 1>(segments, positions, rotary_dim, theta, inverse, extras);
  }
}

// table[p * half + i] = (cos, sin)(positions[p] * inv_freq(i)).
__global__ void rope_table_kernel(const int32_t* positions, int64_t n, int half, double log2_theta,
                                  float2* table) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * half) return;
  const int f = static_cast<int>(i % half);
  const float inv = static_cast<float>(rope_inv_freq(f, 2 * half, log2_theta));
  float s, c;
  sincos_of(static_cast<float>(positions[i / half]) * inv, &s, &c);
  table[i] = make_float2(c, s);
}

}  // namespace

Tensor rope_table_cuda(const Tensor& positions, int64_t rotary_dim, double theta) {
  const int64_t P = positions.numel(), half = rotary_dim / 2;
  Tensor table = Tensor::empty({P, 2 * half}, DType::F32, positions.device());
  if (P * half == 0) return table;
  rope_table_kernel<<<cuda::grid_for(P * half, kBlock), kBlock, 0, cuda::stream()>>>(
      positions.data<int32_t>(), P, static_cast<int>(half), std::log2(theta),
      reinterpret_cast<float2*>(table.raw_data()));
  FG_CUDA_CHECK(cudaGetLastError());
  return table;
}

void rope_segments_cuda(const std::vector<RopeSegment>& segments, const Tensor& positions,
                        int64_t rotary_dim, double theta, bool inverse, const RopeExtras& extras) {
  switch (segments[0].in.dtype()) {
    case DType::F32:
      return dispatch_width<float>(segments, positions, rotary_dim, theta, inverse, extras);
    case DType::F64:
      return dispatch_width<double>(segments, positions, rotary_dim, theta, inverse, extras);
    case DType::BF16:
      return dispatch_width<bf16>(segments, positions, rotary_dim, theta, inverse, extras);
    default:
      FG_THROW("rope: dtype ", dtype_name(segments[0].in.dtype()), " is not supported on the GPU");
  }
}

}  // namespace fg::ops::detail
