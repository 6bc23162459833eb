// Cross-entropy on the GPU with the softmax fused in. Forward: one block per
// row makes one pass over the logits with an online max and rescaled sum, then
// writes lse and the row's loss; a one-block kernel divides their sum by the
// count. Backward: one block per row recomputes softmax from the logits and lse.
// With the gradient known up front (cross_entropy_with_grad), one kernel does
// both and writes dlogits over the logits (on Hopper from a copy of the row in
// shared memory).
// The count and dloss are read from device memory: no copy to or from the host
// and no sync, so these launches can be captured in a CUDA graph. Math in fp32
// for f32 and bf16 (f64 for f64); no (N, V) buffer.
#include <cmath>
#include <cub/block/block_reduce.cuh>
#include <type_traits>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/cross_entropy/cross_entropy.h"
#include "ops/gemm/gemm_hopper.cuh"

namespace fg::ops::detail {
namespace {

constexpr int kRowBlock = 256;     // threads per row: a vocabulary row is long
constexpr int kLargeRowBlock = 512;  // threads per row for large vocabularies (see with_row_tiling)
constexpr int kUnroll = 4;         // logits a thread loads before it computes on them
constexpr int kReduceBlock = 256;  // threads of the one-block reductions (count, mean)

// e^x: for fp32 one multiply and the hardware's exp2 (2 ulp, as expf, at a third
// of its instructions: at vocabulary sizes these kernels are as much issue- as
// bandwidth-bound, so a logit costs as few instructions as it can); f64 keeps exp.
__device__ __forceinline__ float exp_of(float x) {
  return exp2_approx(x * kLog2e);
}
__device__ __forceinline__ double exp_of(double x) { return exp(x); }

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
    return {m, a.sum * exp_of(a.max - m) + b.sum * exp_of(b.max - m)};
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

// The row passes all three kernels are made of. A block of kBlock threads owns
// one row; each thread takes kVec consecutive logits at a time (16-byte loads
// when the rows are 16-byte aligned, kVec = 1 otherwise) and unroll_of(kVec)
// such packs before it computes on them, so that their loads overlap.
// Packs a thread loads at once: 4 single values, or 2 16-byte packs (more would
// cost registers, not bandwidth).
constexpr int unroll_of(int vec) { return vec == 1 ? kUnroll : 2; }

template <class T, int kVec>
__device__ __forceinline__ void load_values(const T* p, T (&out)[kVec]) {
  const Pack<T, kVec> pk = load_pack<kVec>(p);
#pragma unroll
  for (int i = 0; i < kVec; ++i) out[i] = pk.v[i];
}

template <class T, int kVec>
__device__ __forceinline__ void store_values(T* p, const T (&in)[kVec]) {
  Pack<T, kVec> pk;
#pragma unroll
  for (int i = 0; i < kVec; ++i) pk.v[i] = in[i];
  store_pack<kVec>(p, pk);
}

// log sum exp of the row x (vocab values): an online max and rescaled sum over
// the thread's packs, then one block reduction. -inf adds exp(-inf) = 0; NaN
// reaches the sum and propagates. Every thread gets the result.
template <class T, class C, int kBlock, int kVec>
__device__ C row_log_sum_exp(const T* x, int64_t vocab) {
  using BlockReduce = cub::BlockReduce<MaxSum<C>, kBlock>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ C result;
  constexpr int kPacks = unroll_of(kVec);
  const int64_t packs = vocab / kVec;
  MaxSum<C> part{-INFINITY, 0};
  for (int64_t base = threadIdx.x; base < packs; base += kBlock * kPacks) {
    C v[kPacks][kVec];
#pragma unroll
    for (int u = 0; u < kPacks; ++u) {
      const int64_t p = base + u * kBlock;
      T raw[kVec];
      if (p < packs) load_values<T, kVec>(x + p * kVec, raw);
#pragma unroll
      for (int i = 0; i < kVec; ++i) v[u][i] = p < packs ? to_compute(raw[i]) : C(-INFINITY);
    }
    C m = part.max;
#pragma unroll
    for (int u = 0; u < kPacks; ++u)
#pragma unroll
      for (int i = 0; i < kVec; ++i) m = v[u][i] > m ? v[u][i] : m;
    if (m == -INFINITY) {  // nothing finite yet: exp(v - m) would be NaN for v = -inf
#pragma unroll
      for (int u = 0; u < kPacks; ++u)
#pragma unroll
        for (int i = 0; i < kVec; ++i)
          if (v[u][i] != v[u][i]) part.sum = v[u][i];
      continue;
    }
    part.sum *= exp_of(part.max - m);
#pragma unroll
    for (int u = 0; u < kPacks; ++u)
#pragma unroll
      for (int i = 0; i < kVec; ++i) part.sum += exp_of(v[u][i] - m);
    part.max = m;
  }
  MaxSum<C> total = BlockReduce(temp).Reduce(part, CombineMaxSum<C>());
  if (threadIdx.x == 0) result = total.max + log(total.sum);
  __syncthreads();
  return result;
}

// Rounds kVec computed values into one pack of T at p (bf16 two at a time).
template <class T, class C, int kVec>
__device__ __forceinline__ void store_rounded(T* p, const C (&g)[kVec]) {
  T out[kVec];
  if constexpr (std::is_same_v<T, bf16> && kVec % 2 == 0) {
#pragma unroll
    for (int i = 0; i < kVec; i += 2) {
      const __nv_bfloat162 pair = __floats2bfloat162_rn(g[i], g[i + 1]);
      out[i] = bf16{__bfloat16_as_ushort(pair.x)};
      out[i + 1] = bf16{__bfloat16_as_ushort(pair.y)};
    }
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = from_compute<T>(g[i]);
  }
  store_values<T, kVec>(p, out);
}

// d = scale * (softmax(x) - onehot(target)) for the row x with log-sum-exp lse;
// zeros when scale is 0 (an ignored row, or count 0). d may be x itself: each
// thread reads its pack before it writes it.
template <class T, class C, int kBlock, int kVec>
__device__ void write_row_grad(const T* x, T* d, int64_t vocab, C lse, C scale, int32_t target) {
  constexpr int kPacks = unroll_of(kVec);
  const int64_t packs = vocab / kVec;
  if (scale == C(0)) {
    const C zeros[kVec] = {};
    for (int64_t p = threadIdx.x; p < packs; p += kBlock)
      store_rounded<T, C, kVec>(d + p * kVec, zeros);
    return;
  }
  for (int64_t base = threadIdx.x; base < packs; base += kBlock * kPacks) {
    T raw[kPacks][kVec];
#pragma unroll
    for (int u = 0; u < kPacks; ++u)
      if (base + u * kBlock < packs) load_values<T, kVec>(x + (base + u * kBlock) * kVec, raw[u]);
#pragma unroll
    for (int u = 0; u < kPacks; ++u) {
      const int64_t p = base + u * kBlock;
      if (p >= packs) break;
      const int at = static_cast<int>(target - p * kVec);  // the target's place, if in this pack
      C g[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i)
        g[i] = scale * exp_of(to_compute(raw[u][i]) - lse) - (i == at ? scale : C(0));
      store_rounded<T, C, kVec>(d + p * kVec, g);
    }
  }
}

// A counted row's loss is lse - x[target]; 0 for an ignored row, NaN for a
// target outside [0, V) (no host-side range check here: the bad target shows).
template <class T, class C>
__device__ C row_loss_of(const T* x, int64_t vocab, C lse, int32_t target) {
  if (target == kIgnoreIndex) return C(0);
  if (target < 0 || target >= vocab) return C(NAN);
  return lse - to_compute(x[target]);
}

// The scale of a row's gradient: dloss / count, 0 on ignored rows and when count
// is 0. dloss and count are read from device memory by every block (two cached
// loads) so that nothing waits on the host.
template <class C>
__device__ C row_grad_scale(const C* dloss, const int32_t* count, int32_t target) {
  const int32_t c = *count;
  return target == kIgnoreIndex || c == 0 ? C(0) : *dloss / static_cast<C>(c);
}

// lse[row] and row_loss[row].
template <class T, class C, int kBlock, int kVec>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_forward_kernel(const T* logits, const int32_t* targets, C* lse, C* row_loss,
                                 int64_t vocab, int64_t ld) {
  const int64_t row = blockIdx.x;
  const T* x = logits + row * ld;
  const C l = row_log_sum_exp<T, C, kBlock, kVec>(x, vocab);
  if (threadIdx.x != 0) return;
  lse[row] = l;
  row_loss[row] = row_loss_of(x, vocab, l, targets[row]);
}

// dlogits[row] from the logits and the lse forward saved.
template <class T, class C, int kBlock, int kVec>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_backward_kernel(const T* logits, const int32_t* targets, const C* lse,
                                  const C* dloss, const int32_t* count, T* dlogits, int64_t vocab,
                                  int64_t ld, int64_t dld) {
  const int64_t row = blockIdx.x;
  const int32_t t = targets[row];
  write_row_grad<T, C, kBlock, kVec>(logits + row * ld, dlogits + row * dld, vocab, lse[row],
                                     row_grad_scale(dloss, count, t), t);
}

// Both in one pass over the row: lse and the row's loss, then dlogits written
// over the logits. The second read of the row comes from L2 (a row is at most
// a few hundred KB and only two blocks of kBlock threads share an SM), so the
// logits cross DRAM once each way instead of read twice and written once.
template <class T, class C, int kBlock, int kVec>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_fused_kernel(T* logits, const int32_t* targets, C* lse, C* row_loss,
                               const C* dloss, const int32_t* count, int64_t vocab, int64_t ld) {
  const int64_t row = blockIdx.x;
  T* x = logits + row * ld;
  const int32_t t = targets[row];
  const C l = row_log_sum_exp<T, C, kBlock, kVec>(x, vocab);
  if (threadIdx.x == 0) {
    lse[row] = l;
    row_loss[row] = row_loss_of(x, vocab, l, t);  // read before any thread overwrites x[t]
  }
  __syncthreads();
  write_row_grad<T, C, kBlock, kVec>(x, x, vocab, l, row_grad_scale(dloss, count, t), t);
}

// The fused pass with the row staged in shared memory (bf16 rows of whole 16-byte packs, at
// most kStagedRowBytes, on sm_90a): one bulk copy brings the row in, both passes read it
// there and dlogits go out over the logits, so each logit crosses DRAM once each way and
// L2 once. Two or more blocks share an SM, so one's copy runs under another's math and
// stores. Same threads and order of operations as the kernels above: the same bits.
// (The copy in parts, each with its barrier so the first pass starts on the first: no
// faster on the H200; bench/RESULTS.md.)
constexpr int64_t kStagedRowBytes = 112 * 1024;

template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_fused_staged_kernel(bf16* logits, const int32_t* targets, float* lse,
                                      float* row_loss, const float* dloss, const int32_t* count,
                                      int64_t vocab, int64_t ld) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(128) unsigned char staged[];
  __shared__ uint64_t landed;
  const int64_t row = blockIdx.x;
  bf16* x = logits + row * ld;
  if (threadIdx.x == 0) {
    hopper::mbar_init(&landed, 1);
    hopper::fence_mbar_init();
    const uint32_t bytes = static_cast<uint32_t>(vocab * sizeof(bf16));
    hopper::mbar_expect_tx(&landed, bytes);
    hopper::bulk_load_1d(smem_addr(staged), x, bytes, &landed);
  }
  const int32_t t = targets[row];
  const float scale = row_grad_scale(dloss, count, t);
  __syncthreads();  // the barrier is initialized before anyone waits on it
  hopper::mbar_wait(&landed, 0);
  const bf16* xs = reinterpret_cast<const bf16*>(staged);
  const float l = row_log_sum_exp<bf16, float, kBlock, kPackOf<bf16>>(xs, vocab);
  if (threadIdx.x == 0) {
    lse[row] = l;
    row_loss[row] = row_loss_of(xs, vocab, l, t);
  }
  write_row_grad<bf16, float, kBlock, kPackOf<bf16>>(xs, x, vocab, l, scale, t);
#else
  __trap();  // launched only where sm90a_kernels_run()
#endif
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

// Calls launch.template operator()<kBlock, kVec>() with the row tiling for these
// logits: 16-byte packs when every row starts 16-byte aligned; kLargeRowBlock
// threads per row for large vocabularies (few blocks per SM, so the rows the
// fused kernel reads twice stay in L2), kRowBlock for small ones.
template <class T, class Launch>
void with_row_tiling(const Tensor& logits, const Tensor& dlogits, Launch&& launch) {
  constexpr int kVec = kPackOf<T>;
  const int64_t vocab = logits.size(1);
  const bool packed = vocab % kVec == 0 && row_stride(logits) % kVec == 0 &&
                      row_stride(dlogits) % kVec == 0 && logits.starts_aligned(16) &&
                      dlogits.starts_aligned(16);
  const bool large = vocab >= 16 * 1024;
  if (packed && large) return launch.template operator()<kLargeRowBlock, kVec>();
  if (packed) return launch.template operator()<kRowBlock, kVec>();
  if (large) return launch.template operator()<kLargeRowBlock, 1>();
  launch.template operator()<kRowBlock, 1>();
}

// C: fp32 for f32 and bf16 logits, f64 for f64 (the dtype of loss, lse and dloss).
template <class T, class C>
void launch_mean(const Tensor& row_loss, const Tensor& count, const Tensor& loss) {
  cross_entropy_mean_kernel<C><<<1, kReduceBlock, 0, cuda::stream()>>>(
      row_loss.data<C>(), row_loss.numel(), count.data<int32_t>(), loss.data<C>());
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class T, class C>
void launch_forward(const Tensor& logits, const Tensor& targets, const Tensor& count,
                    const Tensor& loss, const Tensor& lse) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  Tensor row_loss = Tensor::empty({n}, dtype_of<C>(), logits.device());  // (N)
  if (n > 0) {
    with_row_tiling<T>(logits, logits, [&]<int kBlock, int kVec>() {
      cross_entropy_forward_kernel<T, C, kBlock, kVec>
          <<<static_cast<unsigned>(n), kBlock, 0, cuda::stream()>>>(
              logits.data<T>(), targets.data<int32_t>(), lse.data<C>(), row_loss.data<C>(), vocab,
              row_stride(logits));
    });
    FG_CUDA_CHECK(cudaGetLastError());
  }
  launch_mean<T, C>(row_loss, count, loss);
}

template <class T, class C>
void launch_backward(const Tensor& dloss, const Tensor& logits, const Tensor& targets,
                     const Tensor& lse, const Tensor& count, const Tensor& dlogits) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  if (n == 0 || vocab == 0) return;
  with_row_tiling<T>(logits, dlogits, [&]<int kBlock, int kVec>() {
    cross_entropy_backward_kernel<T, C, kBlock, kVec>
        <<<static_cast<unsigned>(n), kBlock, 0, cuda::stream()>>>(
            logits.data<T>(), targets.data<int32_t>(), lse.data<C>(), dloss.data<C>(),
            count.data<int32_t>(), dlogits.data<T>(), vocab, row_stride(logits),
            row_stride(dlogits));
  });
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class T, class C>
void launch_fused(const Tensor& logits, const Tensor& targets, const Tensor& count,
                  const Tensor& dloss, const Tensor& loss, const Tensor& lse) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  Tensor row_loss = Tensor::empty({n}, dtype_of<C>(), logits.device());  // (N)
  if (n > 0) {
    with_row_tiling<T>(logits, logits, [&]<int kBlock, int kVec>() {
      if constexpr (std::is_same_v<T, bf16> && kVec == kPackOf<T>) {
        const int64_t row_bytes = vocab * static_cast<int64_t>(sizeof(T));
        if (row_bytes <= kStagedRowBytes && cuda::sm90a_kernels_run()) {
          const auto kernel = cross_entropy_fused_staged_kernel<kBlock>;
          FG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(row_bytes)));
          kernel<<<static_cast<unsigned>(n), kBlock, static_cast<size_t>(row_bytes),
                   cuda::stream()>>>(logits.data<T>(), targets.data<int32_t>(), lse.data<C>(),
                                     row_loss.data<C>(), dloss.data<C>(), count.data<int32_t>(),
                                     vocab, row_stride(logits));
          return;
        }
      }
      cross_entropy_fused_kernel<T, C, kBlock, kVec>
          <<<static_cast<unsigned>(n), kBlock, 0, cuda::stream()>>>(
              logits.data<T>(), targets.data<int32_t>(), lse.data<C>(), row_loss.data<C>(),
              dloss.data<C>(), count.data<int32_t>(), vocab, row_stride(logits));
    });
    FG_CUDA_CHECK(cudaGetLastError());
  }
  launch_mean<T, C>(row_loss, count, loss);
}

// Calls f.template operator()<T, C>() for the logits' dtype.
template <class F>
void dispatch_logits(const char* op, const Tensor& logits, F&& f) {
  FG_CHECK(logits.size(0) < (int64_t{1} << 31), op, ": ", logits.size(0),
           " rows exceed the GPU grid");
  switch (logits.dtype()) {
    case DType::F32: return f.template operator()<float, float>();
    case DType::F64: return f.template operator()<double, double>();
    case DType::BF16: return f.template operator()<bf16, float>();
    default: FG_THROW(op, ": dtype ", dtype_name(logits.dtype()), " is not supported");
  }
}

}  // namespace

void count_targets_cuda(const Tensor& targets, const Tensor& count) {
  count_targets_kernel<<<1, kReduceBlock, 0, cuda::stream()>>>(
      targets.data<int32_t>(), targets.numel(), count.data<int32_t>());
  FG_CUDA_CHECK(cudaGetLastError());
}

void cross_entropy_mean_cuda(const Tensor& row_loss, const Tensor& count, const Tensor& loss) {
  launch_mean<float, float>(row_loss, count, loss);
}

void cross_entropy_forward_cuda(const Tensor& logits, const Tensor& targets, const Tensor& count,
                                const Tensor& loss, const Tensor& lse) {
  dispatch_logits("cross_entropy", logits, [&]<class T, class C>() {
    launch_forward<T, C>(logits, targets, count, loss, lse);
  });
}

void cross_entropy_backward_cuda(const Tensor& dloss, const Tensor& logits, const Tensor& targets,
                                 const Tensor& lse, const Tensor& count, const Tensor& dlogits) {
  dispatch_logits("cross_entropy_backward", logits, [&]<class T, class C>() {
    launch_backward<T, C>(dloss, logits, targets, lse, count, dlogits);
  });
}

void cross_entropy_fused_cuda(const Tensor& logits, const Tensor& targets, const Tensor& count,
                              const Tensor& dloss, const Tensor& loss, const Tensor& lse) {
  dispatch_logits("cross_entropy_with_grad", logits, [&]<class T, class C>() {
    launch_fused<T, C>(logits, targets, count, dloss, loss, lse);
  });
}

}  // namespace fg::ops::detail
