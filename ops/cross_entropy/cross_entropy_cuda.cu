// Cross-entropy on the GPU with the softmax fused in. Forward: one block per
// row makes one pass over the logits with an online max and rescaled sum, then
// writes lse and the row's loss; a one-block kernel takes the mean over the
// counted rows. Backward: one block per row recomputes softmax from the logits
// and lse. Math in fp32 for f32 and bf16 (f64 for f64); no (N, V) buffer.
#include <cmath>
#include <cub/block/block_reduce.cuh>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/cross_entropy/cross_entropy.h"

namespace fg::ops::detail {
namespace {

constexpr int kRowBlock = 256;   // threads per row: a vocabulary row is long
constexpr int kUnroll = 4;       // logits a thread loads before it computes on them
constexpr int kMeanBlock = 256;  // threads of the one block that takes the mean

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

struct SumCount {
  double sum;
  int64_t count;
};

struct CombineSumCount {
  __device__ __forceinline__ SumCount operator()(const SumCount& a, const SumCount& b) const {
    return {a.sum + b.sum, a.count + b.count};
  }
};

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

// loss = mean of row_loss over the rows not ignored (0 when there are none).
template <class C>
__global__ void cross_entropy_mean_kernel(const C* row_loss, const int32_t* targets, int64_t n,
                                          C* loss, int32_t* count) {
  using BlockReduce = cub::BlockReduce<SumCount, kMeanBlock>;
  __shared__ typename BlockReduce::TempStorage temp;
  SumCount part{0.0, 0};
  for (int64_t i = threadIdx.x; i < n; i += kMeanBlock) {
    if (targets[i] == kIgnoreIndex) continue;
    part.sum += static_cast<double>(row_loss[i]);
    part.count += 1;
  }
  SumCount total = BlockReduce(temp).Reduce(part, CombineSumCount());
  if (threadIdx.x != 0) return;
  *loss = total.count ? static_cast<C>(total.sum / static_cast<double>(total.count)) : C(0);
  *count = static_cast<int32_t>(total.count);
}

// dlogits[row] = scale (softmax(logits[row]) - onehot(target)); 0 on ignored rows.
template <class T, class C>
__global__ void cross_entropy_backward_kernel(const T* logits, const int32_t* targets, const C* lse,
                                              T* dlogits, int64_t vocab, C scale) {
  int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  T* d = dlogits + row * vocab;
  int32_t t = targets[row];
  if (t == kIgnoreIndex) {
    for (int64_t j = threadIdx.x; j < vocab; j += kRowBlock) d[j] = from_compute<T>(C(0));
    return;
  }
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

// C: fp32 for f32 and bf16 logits, f64 for f64 (the dtype of loss and lse).
template <class T, class C>
int64_t launch_forward(const Tensor& logits, const Tensor& targets, const Tensor& loss,
                       const Tensor& lse) {
  int64_t n = logits.size(0), vocab = logits.size(1);
  Tensor row_loss = Tensor::empty({n}, dtype_of<C>(), logits.device());  // (N)
  Tensor count = Tensor::empty({1}, DType::I32, logits.device());
  if (n > 0) {
    cross_entropy_forward_kernel<T, C><<<static_cast<unsigned>(n), kRowBlock, 0, cuda::stream()>>>(
        logits.data<T>(), targets.data<int32_t>(), lse.data<C>(), row_loss.data<C>(), vocab);
    FG_CUDA_CHECK(cudaGetLastError());
  }
  cross_entropy_mean_kernel<C><<<1, kMeanBlock, 0, cuda::stream()>>>(
      row_loss.data<C>(), targets.data<int32_t>(), n, loss.data<C>(), count.data<int32_t>());
  FG_CUDA_CHECK(cudaGetLastError());
  // The count is part of the API's result: one small copy and a sync.
  int32_t host_count = 0;
  FG_CUDA_CHECK(cudaMemcpyAsync(&host_count, count.raw_data(), sizeof(host_count),
                                cudaMemcpyDeviceToHost, cuda::stream()));
  FG_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
  return host_count;
}

template <class T, class C>
void launch_backward(double dloss, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                     int64_t count, const Tensor& dlogits) {
  int64_t n = logits.size(0), vocab = logits.size(1);
  if (n == 0 || vocab == 0) return;
  // count 0 means every row is ignored: the kernel writes zeros and never uses scale.
  C scale = count ? static_cast<C>(dloss / static_cast<double>(count)) : C(0);
  cross_entropy_backward_kernel<T, C><<<static_cast<unsigned>(n), kRowBlock, 0, cuda::stream()>>>(
      logits.data<T>(), targets.data<int32_t>(), lse.data<C>(), dlogits.data<T>(), vocab, scale);
  FG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

int64_t cross_entropy_forward_cuda(const Tensor& logits, const Tensor& targets, const Tensor& loss,
                                   const Tensor& lse) {
  FG_CHECK(logits.size(0) < (int64_t{1} << 31), "cross_entropy: ", logits.size(0),
           " rows exceed the GPU grid");
  switch (logits.dtype()) {
    case DType::F32:
      return launch_forward<float, float>(logits, targets, loss, lse);
    case DType::F64:
      return launch_forward<double, double>(logits, targets, loss, lse);
    case DType::BF16:
      return launch_forward<bf16, float>(logits, targets, loss, lse);
    default:
      FG_THROW("cross_entropy: dtype ", dtype_name(logits.dtype()), " is not supported");
  }
}

void cross_entropy_backward_cuda(double dloss, const Tensor& logits, const Tensor& targets,
                                 const Tensor& lse, int64_t count, const Tensor& dlogits) {
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
