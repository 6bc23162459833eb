// The bias gradient of linear on the GPU: column sums of dy (rows, out). The
// matrix products of linear go through ops::gemm (cuBLASLt).
#include <algorithm>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/linear/linear.h"

namespace fg::ops::detail {
namespace {

// A block sums kCols * kVec adjacent columns over one chunk of kChunkRows rows: its
// threads' x runs along a row (coalesced reads, kVec columns each: one 16-byte load per
// row where the rows allow it), its y strides over the chunk's rows, and the kRowLanes
// partial sums meet in shared memory. Chunks give tall matrices enough blocks; their
// partial sums (chunks, cols) are summed by a second pass of the same kernel. Fixed
// order throughout, so results are deterministic.
constexpr int kCols = 32;
constexpr int kRowLanes = 16;
constexpr int64_t kChunkRows = 256;

// out[chunk, col] = sum of in[r, col] over the chunk's rows; C is the accumulator.
template <class In, class Out, class C, int kVec>
__global__ void column_sum_kernel(const In* in, Out* out, int64_t rows, int64_t cols,
                                  int64_t chunk_rows) {
  __shared__ C partial[kRowLanes][kCols * kVec];
  const int64_t col = (blockIdx.x * static_cast<int64_t>(kCols) + threadIdx.x) * kVec;
  const int64_t begin = blockIdx.y * chunk_rows, end = min(rows, begin + chunk_rows);
  C acc[kVec] = {};
  if (col < cols)
#pragma unroll 4
    for (int64_t r = begin + threadIdx.y; r < end; r += kRowLanes) {
      const Pack<In, kVec> v = load_pack<kVec>(in + r * cols + col);
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[e] += to_compute(v.v[e]);
    }
#pragma unroll
  for (int e = 0; e < kVec; ++e) partial[threadIdx.y][threadIdx.x * kVec + e] = acc[e];
  __syncthreads();
  if (threadIdx.y != 0 || col >= cols) return;
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    C total = 0;
    for (int y = 0; y < kRowLanes; ++y) total += partial[y][threadIdx.x * kVec + e];
    out[blockIdx.y * cols + col + e] = from_compute<Out>(total);
  }
}

template <class In, class Out, class C>
void launch_pass(const In* in, Out* out, int64_t rows, int64_t cols, int64_t chunk_rows) {
  const int64_t chunks = std::max<int64_t>(1, (rows + chunk_rows - 1) / chunk_rows);
  const auto run = [&]<int kVec>() {
    const dim3 grid(cuda::grid_for((cols + kVec - 1) / kVec, kCols), static_cast<unsigned>(chunks));
    column_sum_kernel<In, Out, C, kVec>
        <<<grid, dim3(kCols, kRowLanes), 0, cuda::stream()>>>(in, out, rows, cols, chunk_rows);
  };
  constexpr int kVec = kPackOf<In>;
  if (cols % kVec == 0 && reinterpret_cast<uintptr_t>(in) % 16 == 0)
    run.template operator()<kVec>();
  else
    run.template operator()<1>();
  FG_CUDA_CHECK(cudaGetLastError());
}

// C: fp32 for f32 and bf16, f64 for f64.
template <class T, class C>
void launch_column_sum(const Tensor& dy, const Tensor& db) {
  int64_t rows = dy.size(0), cols = dy.size(1);
  if (cols == 0) return;
  if (rows <= kChunkRows) {  // one pass (rows == 0 writes zeros)
    launch_pass<T, T, C>(dy.data<T>(), db.data<T>(), rows, cols, kChunkRows);
    return;
  }
  int64_t chunks = (rows + kChunkRows - 1) / kChunkRows;
  Tensor partial = Tensor::empty({chunks, cols}, dtype_of<C>(), dy.device());  // (chunks, cols)
  launch_pass<T, C, C>(dy.data<T>(), partial.data<C>(), rows, cols, kChunkRows);
  launch_pass<C, T, C>(partial.data<C>(), db.data<T>(), chunks, cols, chunks);
}

}  // namespace

void column_sum_cuda(const Tensor& dy, const Tensor& db) {
  switch (dy.dtype()) {
    case DType::F32:
      return launch_column_sum<float, float>(dy, db);
    case DType::F64:
      return launch_column_sum<double, double>(dy, db);
    case DType::BF16:
      return launch_column_sum<bf16, float>(dy, db);
    default:
      FG_THROW("linear_backward: dtype ", dtype_name(dy.dtype()), " is not supported");
  }
}

}  // namespace fg::ops::detail
