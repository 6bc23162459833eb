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

// out (n, D) = weight[ids] (V, D): each thread copies kVec consecutive elements (one
// 16-byte access when the rows allow it), so reads of a row and writes of the output
// are both coalesced and the row is divided out once per pack.
template <class T, int kVec>
__global__ void embedding_forward_kernel(const T* weight, const int32_t* ids, T* out, int64_t n,
                                         int64_t dim, int64_t vocab) {
  const int64_t row_packs = dim / kVec;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * row_packs) return;
  const int64_t row = i / row_packs, col = (i - row * row_packs) * kVec;
  const int64_t id = ids[row];
  Pack<T, kVec> v;
  if (id < 0 || id >= vocab) {
#pragma unroll
    for (int e = 0; e < kVec; ++e) v.v[e] = from_compute<T>(NAN);
  } else {
    v = load_pack<kVec>(weight + id * dim + col);
  }
  store_pack<kVec>(out + row * dim + col, v);
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

// piece_row[p] = the row piece p belongs to, for every piece of every row.
__global__ void embedding_piece_rows_kernel(const int32_t* piece_start, int32_t vocab,
                                            int32_t* piece_row) {
  const int32_t v = blockIdx.x * blockDim.x + threadIdx.x;
  if (v >= vocab) return;
  for (int32_t p = piece_start[v]; p < piece_start[v + 1]; ++p) piece_row[p] = v;
}

// Block b sums piece b (if there is one; at most n pieces): rows of grad_out at the
// piece's sorted positions, in order, into scratch row b; kVec columns per thread.
template <class T, class Acc, int kVec>
__global__ void embedding_piece_sums_kernel(const T* grad_out, const int32_t* sorted_positions,
                                            const int32_t* run_start, const int32_t* piece_start,
                                            const int32_t* piece_row, int32_t vocab, int64_t dim,
                                            Acc* scratch) {
  const int32_t piece = blockIdx.x;
  if (piece >= piece_start[vocab]) return;
  const int32_t row = piece_row[piece];
  const int32_t begin = run_start[row] + (piece - piece_start[row]) * kPiece;
  const int32_t end = min(begin + kPiece, run_start[row + 1]);
  for (int64_t col = threadIdx.x * kVec; col < dim; col += blockDim.x * kVec) {
    Pack<Acc, kVec> sum = {};
    for (int32_t j = begin; j < end; ++j) {
      const Pack<T, kVec> g = load_pack<kVec>(grad_out + sorted_positions[j] * dim + col);
#pragma unroll
      for (int e = 0; e < kVec; ++e) sum.v[e] += static_cast<Acc>(to_compute(g.v[e]));
    }
    store_pack<kVec>(scratch + piece * dim + col, sum);
  }
}

// grad_weight (V, D) = (add ? grad_weight : 0) + the row's pieces, in order: one
// block per row, kVec columns per thread. A row no id names is written only when it
// must become zero.
template <class Acc, class Out, int kVec>
__global__ void embedding_rows_kernel(const Acc* scratch, const int32_t* piece_start, int64_t dim,
                                      Out* grad_weight, bool add) {
  const int64_t row = blockIdx.x;
  const int32_t begin = piece_start[row], end = piece_start[row + 1];
  if (begin == end && add) return;
  Out* out = grad_weight + row * dim;
  for (int64_t col = threadIdx.x * kVec; col < dim; col += blockDim.x * kVec) {
    Pack<Acc, kVec> sum = {};
    for (int32_t p = begin; p < end; ++p) {
      const Pack<Acc, kVec> s = load_pack<kVec>(scratch + p * dim + col);
#pragma unroll
      for (int e = 0; e < kVec; ++e) sum.v[e] += s.v[e];
    }
    Pack<Out, kVec> o;
    if (add) o = load_pack<kVec>(out + col);
#pragma unroll
    for (int e = 0; e < kVec; ++e)
      o.v[e] = from_compute<Out>(add ? sum.v[e] + to_compute(o.v[e]) : sum.v[e]);
    store_pack<kVec>(out + col, o);
  }
}

// Whether rows of dim elements of every tensor move in packs of vec elements: dim a
// multiple of it and each tensor starting on a pack boundary.
bool rows_in_packs(int64_t dim, int vec, std::initializer_list<const Tensor*> tensors) {
  if (dim % vec != 0) return false;
  for (const Tensor* t : tensors)
    if (!t->starts_aligned(static_cast<size_t>(vec) * dtype_size(t->dtype()))) return false;
  return true;
}

template <class T>
void launch_forward(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  const int64_t n = ids.numel(), dim = weight.size(1);
  if (n * dim == 0) return;
  auto launch = [&]<int kVec>() {
    embedding_forward_kernel<T, kVec>
        <<<cuda::grid_for(n * dim / kVec, kBlock), kBlock, 0, cuda::stream()>>>(
            weight.data<T>(), ids.data<int32_t>(), out.data<T>(), n, dim, weight.size(0));
  };
  if (rows_in_packs(dim, kPackOf<T>, {&weight, &out})) {
    launch.template operator()<kPackOf<T>>();
  } else {
    launch.template operator()<1>();
  }
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
  // (keys, positions) before and after the sort, run_start and pieces (vocab + 1 each),
  // then each piece's row (at most n pieces).
  Tensor index = Tensor::empty({5 * n + 2 * (vocab + 1) + 1}, DType::I32, dev);
  int32_t* key_in = index.data<int32_t>();
  int32_t* pos_in = key_in + n;
  int32_t* key_out = pos_in + n;
  int32_t* pos_out = key_out + n;
  int32_t* run_start = pos_out + n;
  int32_t* pieces = run_start + vocab + 1;
  int32_t* piece_row = pieces + vocab + 1;
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
    embedding_piece_rows_kernel<<<cuda::grid_for(vocab, kBlock), kBlock, 0, s>>>(
        pieces, static_cast<int32_t>(vocab), piece_row);
    FG_CUDA_CHECK(cudaGetLastError());
    auto sums = [&]<int kVec>() {
      embedding_piece_sums_kernel<T, Acc, kVec><<<static_cast<unsigned>(n), kBlock, 0, s>>>(
          grad_out.data<T>(), pos_out, run_start, pieces, piece_row, static_cast<int32_t>(vocab),
          dim, scratch.data<Acc>());
    };
    if (rows_in_packs(dim, kPackOf<T>, {&grad_out, &scratch})) {
      sums.template operator()<kPackOf<T>>();
    } else {
      sums.template operator()<1>();
    }
    FG_CUDA_CHECK(cudaGetLastError());
  }
  auto rows = [&]<int kVec>() {
    embedding_rows_kernel<Acc, Out, kVec><<<static_cast<unsigned>(vocab), kBlock, 0, s>>>(
        scratch.data<Acc>(), pieces, dim, grad_weight.data<Out>(), add);
  };
  if (rows_in_packs(dim, kPackOf<Acc>, {&scratch, &grad_weight})) {
    rows.template operator()<kPackOf<Acc>>();
  } else {
    rows.template operator()<1>();
  }
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
