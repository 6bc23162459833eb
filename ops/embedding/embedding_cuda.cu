// Embedding on the GPU: a row gather forward; a deterministic backward (sorted ids, each
// row's gradients summed in order, in fp32 for bf16, rounded once). Ids are not
// range-checked on the host (that would need a sync): a bad id reads as a NaN row and
// adds to no row.
#include <algorithm>
#include <cmath>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/embedding/embedding.h"

namespace fg::ops::detail {
namespace {

constexpr int kBlock = 256;

// out (n, D) = weight[ids] (V, D): one thread per output element, so reads of a
// row and writes of the output are both coalesced.
template <class T>
__global__ void embedding_forward_kernel(const T* weight, const int32_t* ids, T* out, int64_t n,
                                         int64_t dim, int64_t vocab) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * dim) return;
  int64_t id = ids[i / dim], col = i % dim;
  if (id < 0 || id >= vocab) {
    if constexpr (std::is_same_v<T, bf16>) {
      out[i] = float_to_bf16(NAN);
    } else {
      out[i] = static_cast<T>(NAN);
    }
    return;
  }
  out[i] = weight[id * dim + col];
}

// Backward sums each row's gradients in position order, so the result does not
// depend on scheduling, and in two levels, so a row named thousands of times (a
// small vocabulary, a padding token) is not one thread's long loop: the ids are
// sorted stably with their positions; each row's run of the sorted ids is cut
// into pieces of kPiece, one block sums each piece's rows into a scratch row; then
// one block per row adds its row's pieces in order and writes the row.
constexpr int kPiece = 16;

// keys[i] = ids[i], or vocab (sorted last, summed into no row) when out of range.
__global__ void embedding_sort_keys_kernel(const int32_t* ids, int32_t* keys, int32_t* positions,
                                           int64_t n, int32_t vocab) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  int32_t id = ids[i];
  keys[i] = id >= 0 && id < vocab ? id : vocab;
  positions[i] = static_cast<int32_t>(i);
}

// First index of sorted[0, n) not below v.
__device__ __forceinline__ int32_t lower_bound(const int32_t* sorted, int32_t n, int32_t v) {
  int32_t lo = 0, hi = n;
  while (lo < hi) {
    int32_t mid = (lo + hi) / 2;
    if (sorted[mid] < v)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// For v in [0, vocab]: run_start[v] = where row v's run of the sorted keys starts, and
// pieces[v] = how many pieces it is cut into (0 for v = vocab).
__global__ void embedding_runs_kernel(const int32_t* sorted_keys, int32_t n, int32_t vocab,
                                      int32_t* run_start, int32_t* pieces) {
  int32_t v = blockIdx.x * blockDim.x + threadIdx.x;
  if (v > vocab) return;
  const int32_t begin = lower_bound(sorted_keys, n, v);
  run_start[v] = begin;
  pieces[v] = v == vocab ? 0 : (lower_bound(sorted_keys, n, v + 1) - begin + kPiece - 1) / kPiece;
}

// Block b sums piece b (if there is one; at most n pieces): rows of grad_out at the
// piece's sorted positions, in order, into scratch row b.
template <class T, class Acc>
__global__ void embedding_piece_sums_kernel(const T* grad_out, const int32_t* sorted_positions,
                                            const int32_t* run_start, const int32_t* piece_start,
                                            int32_t vocab, int64_t dim, Acc* scratch) {
  const int32_t piece = blockIdx.x;
  if (piece >= piece_start[vocab]) return;
  const int32_t row = lower_bound(piece_start, vocab + 1, piece + 1) - 1;  // its row's pieces
  const int32_t begin = run_start[row] + (piece - piece_start[row]) * kPiece;
  const int32_t end = min(begin + kPiece, run_start[row + 1]);
  for (int64_t col = threadIdx.x; col < dim; col += blockDim.x) {
    Acc sum = 0;
    for (int32_t j = begin; j < end; ++j)
      sum += static_cast<Acc>(to_compute(grad_out[sorted_positions[j] * dim + col]));
    scratch[piece * dim + col] = sum;
  }
}

// grad_weight (V, D) = (add ? grad_weight : 0) + the row's pieces, in order: one
// block per row. A row no id names is written only when it must become zero.
template <class Acc, class Out>
__global__ void embedding_rows_kernel(const Acc* scratch, const int32_t* piece_start, int64_t dim,
                                      Out* grad_weight, bool add) {
  const int64_t row = blockIdx.x;
  const int32_t begin = piece_start[row], end = piece_start[row + 1];
  if (begin == end && add) return;
  Out* out = grad_weight + row * dim;
  for (int64_t col = threadIdx.x; col < dim; col += blockDim.x) {
    Acc sum = 0;
    for (int32_t p = begin; p < end; ++p) sum += scratch[p * dim + col];
    if (add) sum += to_compute(out[col]);
    out[col] = from_compute<Out>(sum);
  }
}

template <class T>
void launch_forward(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  int64_t n = ids.numel(), dim = weight.size(1), total = n * dim;
  if (total == 0) return;
  embedding_forward_kernel<T><<<cuda::grid_for(total, kBlock), kBlock, 0, cuda::stream()>>>(
      weight.data<T>(), ids.data<int32_t>(), out.data<T>(), n, dim, weight.size(0));
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class T, class Out>
void launch_backward(const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight,
                     bool add) {
  using Acc = compute_t<Out>;
  const int64_t n = ids.numel(), vocab = grad_weight.size(0), dim = grad_weight.size(1);
  FG_CHECK(n < INT32_MAX && vocab < INT32_MAX, "embedding_backward: ", n, " ids over a vocab of ",
           vocab, " do not fit 32-bit sort keys");
  if (vocab * dim == 0) return;
  cudaStream_t s = cuda::stream();
  const Device dev = grad_out.device();
  // (keys, positions) before and after the sort, then run_start and pieces (vocab + 1 each).
  Tensor index = Tensor::empty({4 * n + 2 * (vocab + 1) + 1}, DType::I32, dev);
  int32_t* key_in = index.data<int32_t>();
  int32_t* pos_in = key_in + n;
  int32_t* key_out = pos_in + n;
  int32_t* pos_out = key_out + n;
  int32_t* run_start = pos_out + n;
  int32_t* pieces = run_start + vocab + 1;
  if (n > 0) {
    embedding_sort_keys_kernel<<<cuda::grid_for(n, kBlock), kBlock, 0, s>>>(
        ids.data<int32_t>(), key_in, pos_in, n, static_cast<int32_t>(vocab));
    FG_CUDA_CHECK(cudaGetLastError());
  }
  // Keys lie in [0, vocab]: sort only the bits that can differ.
  const int end_bit = 32 - __builtin_clz(static_cast<uint32_t>(vocab));
  size_t sort_bytes = 0, scan_bytes = 0;
  FG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, key_in, key_out, pos_in,
                                                pos_out, static_cast<int>(n), 0, end_bit, s));
  FG_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, pieces, pieces,
                                              static_cast<int>(vocab + 1), s));
  Tensor temp = Tensor::empty({static_cast<int64_t>(std::max(sort_bytes, scan_bytes) / 4 + 1)},
                              DType::I32, dev);
  if (n > 0)
    FG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw_data(), sort_bytes, key_in, key_out,
                                                  pos_in, pos_out, static_cast<int>(n), 0, end_bit,
                                                  s));
  embedding_runs_kernel<<<cuda::grid_for(vocab + 1, kBlock), kBlock, 0, s>>>(
      key_out, static_cast<int32_t>(n), static_cast<int32_t>(vocab), run_start, pieces);
  FG_CUDA_CHECK(cudaGetLastError());
  // pieces -> piece_start, in place: piece_start[vocab] = the number of pieces (<= n).
  FG_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.raw_data(), scan_bytes, pieces, pieces,
                                              static_cast<int>(vocab + 1), s));
  // Room for the most pieces there can be (every id its own row): n rows.
  Tensor scratch = Tensor::empty({std::max<int64_t>(n, 1), dim}, dtype_of<Acc>(), dev);
  if (n > 0) {
    embedding_piece_sums_kernel<T, Acc><<<static_cast<unsigned>(n), kBlock, 0, s>>>(
        grad_out.data<T>(), pos_out, run_start, pieces, static_cast<int32_t>(vocab), dim,
        scratch.data<Acc>());
    FG_CUDA_CHECK(cudaGetLastError());
  }
  embedding_rows_kernel<Acc, Out><<<static_cast<unsigned>(vocab), kBlock, 0, s>>>(
      scratch.data<Acc>(), pieces, dim, grad_weight.data<Out>(), add);
  FG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void embedding_forward_cuda(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  switch (weight.dtype()) {
    case DType::F32:
      return launch_forward<float>(weight, ids, out);
    case DType::F64:
      return launch_forward<double>(weight, ids, out);
    case DType::BF16:
      return launch_forward<bf16>(weight, ids, out);
    default:
      FG_THROW("embedding: dtype ", dtype_name(weight.dtype()), " is not supported");
  }
}

void embedding_backward_cuda(const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight,
                             bool add) {
  const DType g = grad_out.dtype(), w = grad_weight.dtype();
  if (g == DType::F32 && w == DType::F32)
    return launch_backward<float, float>(grad_out, ids, grad_weight, add);
  if (g == DType::F64 && w == DType::F64)
    return launch_backward<double, double>(grad_out, ids, grad_weight, add);
  if (g == DType::BF16 && w == DType::BF16)
    return launch_backward<bf16, bf16>(grad_out, ids, grad_weight, add);
  if (g == DType::BF16 && w == DType::F32)
    return launch_backward<bf16, float>(grad_out, ids, grad_weight, add);
  if (g == DType::F32 && w == DType::F64)
    return launch_backward<float, double>(grad_out, ids, grad_weight, add);
  FG_THROW("embedding_backward: ", dtype_name(g), " gradients into a ", dtype_name(w),
           " buffer are not supported");
}

}  // namespace fg::ops::detail
