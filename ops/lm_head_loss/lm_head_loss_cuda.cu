// The LM head's chunk with the loss in its product's epilogue (Hopper, bf16). The loss needs
// per row only a shift c and the sum of exp(logit - c), so our GEMM (gemm_hopper.cuh) writes
// E = bf16(exp(logit - c[row])) where the logits would go, with the f32 sum of each row's
// 256-column tile beside it; no pass over the (rows, V) logits follows. A row kernel then
// makes lse = c + log(sum), the loss, and (with a gradient) lowers the target's entry of E by
// the sum, so that dloss / count * (softmax - onehot) = s[row] * E with s = dloss / (count *
// sum): the products read E as they read dlogits, and s scales the (rows, D) sides.
//
// The shift comes before the product, so it cannot be the row's max. It is the target's
// logit L (an f32 dot product of y and W_t, which the loss needs anyway). The row's max is at
// least L, so E's largest entry, exp(max - L), is at least 1 and only entries below e^-87 of
// it flush to zero. The sum is at least exp(max - L): while it stays below e^60 the max is
// within 60 of L, and E, its sums and E @ W stay finite in f32. A row past that (a loss above
// 60 nats, or an overflow to inf) is recomputed exactly by the row kernel: its logits again,
// one block per row, with its max as the shift. Ignored rows (and out-of-range targets) use
// shift 0 and get their E row zeroed: they take no part in the gradient. (Session 24's shift,
// a Cauchy-Schwarz bound |y| max|W_v| - 60, sent whole steps of the seed model to that slow
// path within its first steps: bench/RESULTS.md, session 25.)
#include <cub/block/block_reduce.cuh>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/cross_entropy/cross_entropy.h"
#include "ops/gemm/gemm_hopper.cuh"
#include "ops/lm_head_loss/lm_head_loss.h"

namespace fg::ops::detail {
namespace {

constexpr float kMaxSum = 1.1420074e26f;  // e^60: a row past it is recomputed exactly
constexpr int kTileCols = 256;     // gemm_tn_kernel's output tile width (partial sums per tile)
constexpr int kRowThreads = 128;   // the row kernel's block

// 8 bf16 at p (16-byte aligned) into f32.
__device__ __forceinline__ void load8(const bf16* p, float (&x)[8]) {
  const Pack<bf16, 8> u = load_pack<8>(p);
#pragma unroll
  for (int i = 0; i < 8; ++i) x[i] = to_compute(u.v[i]);
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(~0u, x, o);
  return x;
}

// Per row (one warp): the target's logit y . W_t in f32, the loss's exact term and the
// row's shift (0 for an ignored row, NaN for a target outside [0, V)).
__global__ void target_logit_kernel(const bf16* __restrict__ y, const bf16* __restrict__ w,
                                    const int32_t* __restrict__ targets, int64_t rows, int d,
                                    int vocab, float* __restrict__ target_logit) {
  const int64_t row = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32, t = targets[row];
  const bool valid = t >= 0 && t < vocab;
  float yw = 0.f;
  if (valid) {
    for (int k = 8 * lane; k < d; k += 256) {
      float a[8], b[8];
      load8(y + row * d + k, a);
      load8(w + int64_t{t} * d + k, b);
#pragma unroll
      for (int i = 0; i < 8; ++i) yw += a[i] * b[i];
    }
  }
  yw = warp_sum(yw);
  if (lane == 0) target_logit[row] = valid ? yw : (t == kIgnoreIndex ? 0.f : NAN);
}

// The product's epilogue: E = exp(logit - shift[row]) on the first `vocab` columns, 0 on the
// padding, and per row the f32 sum of its values in each 256-column tile.
struct ExpRowSumsStore {
  CUtensorMap e_map;
  const float* shift;  // (rows)
  float* partial;      // (rows, tiles)
  int rows, vocab, tiles;

  __device__ __forceinline__ void apply(int row, int col0, float (&v)[64]) const {
    // 2^(v log2 e - c log2 e): one FFMA and the MUFU exp2 per value.
    const float c2 = (row < rows ? shift[row] : 0.f) * kLog2e;
    float sum = 0.f;
    if ((col0 & ~7) + kTileCols <= vocab) {  // every column real: no per-value test
#pragma unroll
      for (int i = 0; i < 64; ++i) {
        v[i] = exp2_approx(fmaf(v[i], kLog2e, -c2));
        sum += v[i];
      }
    } else {
#pragma unroll
      for (int i = 0; i < 64; ++i) {
        v[i] = col0 + 8 * (i / 2) + i % 2 < vocab ? exp2_approx(fmaf(v[i], kLog2e, -c2)) : 0.f;
        sum += v[i];
      }
    }
    // The row's 256 columns are spread over the 4 lanes of a quad (col0 = tile + 2 (lane % 4)).
    sum += __shfl_xor_sync(~0u, sum, 1);
    sum += __shfl_xor_sync(~0u, sum, 2);
    if (threadIdx.x % 4 == 0 && row < rows)
      partial[static_cast<int64_t>(row) * tiles + col0 / kTileCols] = sum;
  }
  __device__ __forceinline__ void store(uint32_t box, int row0, int col0) const {
    hopper::tma_store_2d(&e_map, box, col0, row0);
  }
};

template <class Op>
__device__ float block_reduce(float x, Op op) {
  using Reduce = cub::BlockReduce<float, kRowThreads>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ float result;
  const float r = Reduce(temp).Reduce(x, op);
  if (threadIdx.x == 0) result = r;
  __syncthreads();
  const float out = result;
  __syncthreads();  // temp and result may be reused
  return out;
}

// Per row (one block): lse, the row's loss and, with dloss, s and the target's entry of E.
// A row past the window gets its logits recomputed (y in shared memory, d floats) and its E
// rewritten with its max as the shift. An ignored row (loss 0) or a target out of range
// (loss NaN): s 0 and, with dloss, its E row zeroed (under shift 0 it may hold inf).
__global__ void __launch_bounds__(kRowThreads)
    finish_kernel(const bf16* __restrict__ y, const bf16* __restrict__ w,
                  const int32_t* __restrict__ targets, int d, int vocab, int64_t e_stride,
                  int tiles, const float* __restrict__ target_logit,
                  const float* __restrict__ partial, bf16* __restrict__ e,
                  const float* __restrict__ dloss, const int32_t* __restrict__ count,
                  float* __restrict__ row_loss, float* __restrict__ scale) {
  extern __shared__ float y_row[];  // (d), for a recomputed row only
  const int64_t row = blockIdx.x;
  const int t = targets[row];
  const float L = target_logit[row];
  bf16* e_row = e + row * e_stride;
  if (t == kIgnoreIndex || isnan(L)) {
    if (scale)
      for (int v = threadIdx.x; v < vocab; v += kRowThreads) e_row[v] = float_to_bf16(0.f);
    if (threadIdx.x == 0) {
      row_loss[row] = t == kIgnoreIndex ? 0.f : NAN;
      if (scale) scale[row] = 0.f;
    }
    return;
  }
  float part = 0.f;
  for (int i = threadIdx.x; i < tiles; i += kRowThreads) part += partial[row * tiles + i];
  float sum = block_reduce(part, [](float a, float b) { return a + b; });
  float c = L;  // the product's shift
  if (!(sum <= kMaxSum)) {
    for (int k = threadIdx.x; k < d; k += kRowThreads) y_row[k] = bf16_to_float(y[row * d + k]);
    __syncthreads();
    auto logit = [&](int v) {
      float acc = 0.f;
      for (int k = 0; k < d; k += 8) {
        float b[8];
        load8(w + int64_t{v} * d + k, b);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc += y_row[k + i] * b[i];
      }
      return acc;
    };
    float m = -INFINITY;
    for (int v = threadIdx.x; v < vocab; v += kRowThreads) m = fmaxf(m, logit(v));
    c = block_reduce(m, [](float a, float b) { return fmaxf(a, b); });
    part = 0.f;
    for (int v = threadIdx.x; v < vocab; v += kRowThreads) {
      const float x = __expf(logit(v) - c);
      e_row[v] = float_to_bf16(x);
      part += x;
    }
    sum = block_reduce(part, [](float a, float b) { return a + b; });
  }
  if (threadIdx.x != 0) return;
  row_loss[row] = c + logf(sum) - L;
  if (scale) {
    const int32_t n = *count;
    scale[row] = n ? *dloss / (static_cast<float>(n) * sum) : 0.f;
    // s * (exp(L - c) - sum) = dloss / count * (p_target - 1).
    e_row[t] = float_to_bf16(__expf(L - c) - sum);
  }
}

// out = bf16(x * s[row]), (rows, d) rows contiguous, d a multiple of 8: a thread a pack.
__global__ void scale_rows_kernel(const bf16* x, const float* __restrict__ s, int64_t rows, int d,
                                  bf16* out) {  // x may be out
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= rows * (d / 8)) return;
  const float f = s[i / (d / 8)];
  const Pack<bf16, 8> in = load_pack<8>(x + 8 * i);
  Pack<bf16, 8> o;
#pragma unroll
  for (int k = 0; k < 8; ++k) o.v[k] = from_compute<bf16>(to_compute(in.v[k]) * f);
  store_pack<8>(out + 8 * i, o);
}

}  // namespace

bool lm_head_exp_applies(const Tensor& y, const Tensor& w) {
  return y.is_cuda() && y.dtype() == DType::BF16 && y.size(1) % 8 == 0 && w.size(0) % 8 == 0 &&
         y.size(0) < (int64_t{1} << 31) && w.size(0) < (int64_t{1} << 31) && y.starts_aligned(16) &&
         w.starts_aligned(16) && gemm_hopper_available();
}

Tensor lm_head_exp_chunk_cuda(const Tensor& y, const Tensor& w, int64_t vocab,
                              const Tensor& targets, const Tensor& count, const Tensor& dloss,
                              const Tensor& e, const Tensor& scale) {
  const int64_t rows = y.size(0), d = y.size(1), padded = w.size(0);
  const int tiles = static_cast<int>((padded + kTileCols - 1) / kTileCols);
  const Device dev = y.device();
  const Tensor target_logit = Tensor::empty({rows}, DType::F32, dev),
               row_loss = Tensor::empty({rows}, DType::F32, dev),
               partial = Tensor::empty({rows, tiles}, DType::F32, dev);
  target_logit_kernel<<<static_cast<unsigned>((rows + 7) / 8), 256, 0, cuda::stream()>>>(
      y.data<bf16>(), w.data<bf16>(), targets.data<int32_t>(), rows, static_cast<int>(d),
      static_cast<int>(vocab), target_logit.data<float>());  // a warp a row
  FG_CUDA_CHECK(cudaGetLastError());

  const ExpRowSumsStore epi{
      hopper::kmajor_map(e.data<bf16>(), rows, padded, e.strides()[0], hopper::kStoreBox),
      target_logit.data<float>(),
      partial.data<float>(),
      static_cast<int>(rows),
      static_cast<int>(vocab),
      tiles};
  // Ping-pong: one consumer's exponentials run under the other's products (cooperative, which
  // leaves them exposed, took 1.39 ms against 1.12 at GPT-2-small's 8192-row chunk).
  hopper::launch_gemm_tn_pingpong(y.data<bf16>(), y.strides()[0], w.data<bf16>(), w.strides()[0],
                                  static_cast<int>(rows), static_cast<int>(padded),
                                  static_cast<int>(d), epi, cuda::stream());

  const size_t smem = static_cast<size_t>(d) * sizeof(float);
  if (smem > 48 * 1024)
    FG_CUDA_CHECK(cudaFuncSetAttribute(finish_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  finish_kernel<<<static_cast<unsigned>(rows), kRowThreads, smem, cuda::stream()>>>(
      y.data<bf16>(), w.data<bf16>(), targets.data<int32_t>(), static_cast<int>(d),
      static_cast<int>(vocab), e.strides()[0], tiles, target_logit.data<float>(),
      partial.data<float>(), e.data<bf16>(), dloss.defined() ? dloss.data<float>() : nullptr,
      count.data<int32_t>(), row_loss.data<float>(),
      scale.defined() ? scale.data<float>() : nullptr);
  FG_CUDA_CHECK(cudaGetLastError());
  Tensor loss = Tensor::empty({}, DType::F32, dev);
  cross_entropy_mean_cuda(row_loss, count, loss);
  return loss;
}

void scale_rows_cuda(const Tensor& x, const Tensor& s, const Tensor& out) {
  const int64_t rows = x.size(0), d = x.size(1);
  if (rows == 0) return;
  scale_rows_kernel<<<cuda::grid_for(rows * (d / 8), 256), 256, 0, cuda::stream()>>>(
      x.data<bf16>(), s.data<float>(), rows, static_cast<int>(d), out.data<bf16>());
  FG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fg::ops::detail
