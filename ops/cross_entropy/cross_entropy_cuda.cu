// Cross-entropy on the GPU with the softmax fused in. Forward: one block per
// row makes one pass over the logits with an online max and rescaled sum, then
// writes lse and the row's loss; a one-block kernel divides their sum by the
// count. Backward: one block per row recomputes softmax from the logits and lse.
// The count and dloss are read from device memory: no copy to or from the host
// and no sync, so these launches can be captured in a CUDA graph. Math in fp32
// for f32 and bf16 (f64 for f64); no (N, V) buffer.
#include <cmath>
#include <cub/block/block_reduce.cuh>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/cross_entropy/cross_entropy.h"

namespace fg::ops::detail {
namespace {

constexpr int kRowBlock = 256;     // threads per row: a vocabulary row is long
constexpr int kUnroll = 4;         // logits a thread loads before it computes on them
constexpr int kReduceBlock = 256;  // threads of the one-block reductions (count, mean)

// Sum of exp(x - max) over a set of logits, with that set's max.
template <class C>
struct MaxSum {
  C max;
  C sum;
};

template <class C>
struct CombineMaxSum {
  __device__ __forceinline__ MaxSum<C> operator()(const MaxSum<C>& a, const MaxSum<C>& b) const {
    if (a.max == -INFINITY && a.sum == 0) return b;  // a saw nothing (or only -inf)
    if (b.max == -INFINITY && b.sum == 0) return a;
    C m = a.max > b.max ? a.max : b.max;
    return {m, a.sum * exp(a.max - m) + b.sum * exp(b.max - m)};
  }
};

// Sum of term(i) over i in [0, n) by one block of kReduceBlock threads; the
// result is valid in thread 0. n is a batch's row count: one block is enough.
template <class Acc, class Term>
__device__ Acc block_sum(int64_t n, Term term) {
  using BlockReduce = cub::BlockReduce<Acc, kReduceBlock>;
  __shared__ typename BlockReduce::TempStorage temp;
  Acc part = 0;
  for (int64_t i = threadIdx.x; i < n; i += kReduceBlock) part += term(i);
  return BlockReduce(temp).Sum(part);
}

// count = the targets that are not kIgnoreIndex.
__global__ void count_targets_kernel(const int32_t* targets, int64_t n, int32_t* count) {
  int32_t total =
      block_sum<int32_t>(n, [&](int64_t i) { return targets[i] != kIgnoreIndex ? 1 : 0; });
  if (threadIdx.x == 0) *count = total;
}

// lse[row] = log sum exp(logits[row]); row_loss[row] = lse - logits[row, target],
// 0 for an ignored row, NaN for a target outside [0, V).
template <class T, class C>
__global__ void cross_entropy_forward_kernel(const T* logits, const int32_t* targets, C* lse,
                                             C* row_loss, int64_t vocab) {
  using BlockReduce = cub::BlockReduce<MaxSum<C>, kRowBlock>;
  __shared__ typename BlockReduce::TempStorage temp;
  int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  // Online softmax over kUnroll values at a time: their loads are independent
  // (memory-level parallelism), then the running sum is rescaled once to the
  // new max. -inf adds exp(-inf) = 0; NaN reaches the sum and propagates.
  MaxSum<C> part{-INFINITY, 0};
  for (int64_t base = threadIdx.x; base < vocab; base += kRowBlock * kUnroll) {
    C v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t j = base + u * kRowBlock;
      v[u] = j < vocab ? to_compute(x[j]) : C(-INFINITY);
    }
    C m = part.max;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) m = v[u] > m ? v[u] : m;
    if (m == -INFINITY) {  // nothing finite yet: exp(v - m) would be NaN for v = -inf
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (v[u] != v[u]) part.sum = v[u];
      continue;
    }
    part.sum *= exp(part.max - m);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) part.sum += exp(v[u] - m);
    part.max = m;
  }
  MaxSum<C> total = BlockReduce(temp).Reduce(part, CombineMaxSum<C>());
  if (threadIdx.x != 0) return;
  C l = total.max + log(total.sum);
  lse[row] = l;
  int32_t t = targets[row];
  if (t == kIgnoreIndex) {
    row_loss[row] = 0;
  } else if (t < 0 || t >= vocab) {
    row_loss[row] = NAN;  // no host-side range check here: make the bad target visible
  } else {
    row_loss[row] = l - to_compute(x[t]);
  }
}

// loss = sum of row_loss (0 on ignored rows) / count, 0 when count is 0. The
// count comes from device memory: it may be a whole batch's, of which these rows
// are a chunk.
template <class C>
__global__ void cross_entropy_mean_kernel(const C* row_loss, int64_t n, const int32_t* count,
                                          C* loss) {
  // f64 accumulation: the sum of many fp32 row losses keeps its digits.
  double total = block_sum<double>(n, [&](int64_t i) { return static_cast<double>(row_loss[i]); });
  if (threadIdx.x != 0) return;
  int32_t c = *count;
  *loss = c ? static_cast<C>(total / static_cast<double>(c)) : C(0);
}

// dlogits[row] = dloss / count (softmax(logits[row]) - onehot(target)); 0 on
// ignored rows, and on every row when count is 0. dloss and count are read from
// device memory by every block (two cached loads) so that nothing waits on the host.
template <class T, class C>
__global__ void cross_entropy_backward_kernel(const T* logits, const int32_t* targets, const C* lse,
                                              const C* dloss, const int32_t* count, T* dlogits,
                                              int64_t vocab) {
  int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  T* d = dlogits + row * vocab;
  int32_t t = targets[row];
  int32_t c = *count;
  if (t == kIgnoreIndex || c == 0) {
    for (int64_t j = threadIdx.x; j < vocab; j += kRowBlock) d[j] = from_compute<T>(C(0));
    return;
  }
  C scale = *dloss / static_cast<C>(c);
  C l = lse[row];
  // kUnroll independent loads in flight per thread, as in forward.
  for (int64_t base = threadIdx.x; base < vocab; base += kRowBlock * kUnroll) {
    C v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t j = base + u * kRowBlock;
      v[u] = j < vocab ? to_compute(x[j]) : C(0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t j = base + u * kRowBlock;
      C p = exp(v[u] - l);
      if (j < vocab) d[j] = from_compute<T>(scale * (j == t ? p - C(1) : p));
    }
  }
}

// C: fp32 for f32 and bf16 logits, f64 for f64 (the dtype of loss, lse and dloss).
template <class T, class C>
void launch_forward(const Tensor& logits, const Tensor& targets, const Tensor& count,
                    const Tensor& loss, const Tensor& lse) {
  int64_t n = logits.size(0), vocab = logits.size(1);
  Tensor row_loss = Tensor::empty({n}, dtype_of<C>(), logits.device());  // (N)
  if (n > 0) {
    cross_entropy_forward_kernel<T, C><<<static_cast<unsigned>(n), kRowBlock, 0, cuda::stream()>>>(
        logits.data<T>(), targets.data<int32_t>(), lse.data<C>(), row_loss.data<C>(), vocab);
    FG_CUDA_CHECK(cudaGetLastError());
  }
  cross_entropy_mean_kernel<C><<<1, kReduceBlock, 0, cuda::stream()>>>(
      row_loss.data<C>(), n, count.data<int32_t>(), loss.data<C>());
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class T, class C>
void launch_backward(const Tensor& dloss, const Tensor& logits, const Tensor& targets,
                     const Tensor& lse, const Tensor& count, const Tensor& dlogits) {
  int64_t n = logits.size(0), vocab = logits.size(1);
  if (n == 0 || vocab == 0) return;
  cross_entropy_backward_kernel<T, C><<<static_cast<unsigned>(n), kRowBlock, 0, cuda::stream()>>>(
      logits.data<T>(), targets.data<int32_t>(), lse.data<C>(), dloss.data<C>(),
      count.data<int32_t>(), dlogits.data<T>(), vocab);
  FG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void count_targets_cuda(const Tensor& targets, const Tensor& count) {
  count_targets_kernel<<<1, kReduceBlock, 0, cuda::stream()>>>(
      targets.data<int32_t>(), targets.numel(), count.data<int32_t>());
  FG_CUDA_CHECK(cudaGetLastError());
}

void cross_entropy_forward_cuda(const Tensor& logits, const Tensor& targets, const Tensor& count,
                                const Tensor& loss, const Tensor& lse) {
  FG_CHECK(logits.size(0) < (int64_t{1} << 31), "cross_entropy: ", logits.size(0),
           " rows exceed the GPU grid");
  switch (logits.dtype()) {
    case DType::F32:
      return launch_forward<float, float>(logits, targets, count, loss, lse);
    case DType::F64:
      return launch_forward<double, double>(logits, targets, count, loss, lse);
    case DType::BF16:
      return launch_forward<bf16, float>(logits, targets, count, loss, lse);
    default:
      FG_THROW("cross_entropy: dtype ", dtype_name(logits.dtype()), " is not supported");
  }
}

void cross_entropy_backward_cuda(const Tensor& dloss, const Tensor& logits, const Tensor& targets,
                                 const Tensor& lse, const Tensor& count, const Tensor& dlogits) {
  FG_CHECK(logits.size(0) < (int64_t{1} << 31), "cross_entropy_backward: ", logits.size(0),
           " rows exceed the GPU grid");
  switch (logits.dtype()) {
    case DType::F32:
      return launch_backward<float, float>(dloss, logits, targets, lse, count, dlogits);
    case DType::F64:
      return launch_backward<double, double>(dloss, logits, targets, lse, count, dlogits);
    case DType::BF16:
      return launch_backward<bf16, float>(dloss, logits, targets, lse, count, dlogits);
    default:
      FG_THROW("cross_entropy_backward: dtype ", dtype_name(logits.dtype()), " is not supported");
  }
}

}  // namespace fg::ops::detail
