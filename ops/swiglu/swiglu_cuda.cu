// SwiGLU on the GPU: one thread per output element of (rows, F), reading its
// gate g and up u from the two halves of gu's row; fp32 math for f32 and bf16.
#include <cmath>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/swiglu/swiglu.h"

namespace fg::ops::detail {
namespace {

constexpr int kBlock = 256;

template <class C>
__device__ __forceinline__ C sigmoid(C x) {
  return C(1) / (C(1) + exp(-x));  // exp(100) = inf gives 0, not NaN
}

// out (rows, F) = silu(g) * u with gu (rows, 2F) = [g | u].
template <class T>
__global__ void swiglu_forward_kernel(const T* gu, T* out, int64_t rows, int64_t f) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * f) return;
  int64_t r = i / f, j = i % f;
  auto g = to_compute(gu[r * 2 * f + j]);
  auto u = to_compute(gu[r * 2 * f + f + j]);
  out[i] = from_compute<T>(g * sigmoid(g) * u);
}

// dgu (rows, 2F) = [dout u s (1 + g (1 - s)) | dout g s] with s = sigmoid(g).
template <class T>
__global__ void swiglu_backward_kernel(const T* dout, const T* gu, T* dgu, int64_t rows,
                                       int64_t f) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * f) return;
  int64_t r = i / f, j = i % f;
  int64_t gi = r * 2 * f + j, ui = gi + f;
  auto g = to_compute(gu[gi]);
  auto u = to_compute(gu[ui]);
  auto d = to_compute(dout[i]);
  auto s = sigmoid(g);
  dgu[gi] = from_compute<T>(d * u * s * (1 + g * (1 - s)));
  dgu[ui] = from_compute<T>(d * g * s);
}

template <class T>
void launch_forward(const Tensor& gu, const Tensor& out) {
  int64_t f = out.size(-1), total = out.numel();
  if (total == 0) return;
  swiglu_forward_kernel<T><<<cuda::grid_for(total, kBlock), kBlock, 0, cuda::stream()>>>(
      gu.data<T>(), out.data<T>(), total / f, f);
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void launch_backward(const Tensor& dout, const Tensor& gu, const Tensor& dgu) {
  int64_t f = dout.size(-1), total = dout.numel();
  if (total == 0) return;
  swiglu_backward_kernel<T><<<cuda::grid_for(total, kBlock), kBlock, 0, cuda::stream()>>>(
      dout.data<T>(), gu.data<T>(), dgu.data<T>(), total / f, f);
  FG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void swiglu_forward_cuda(const Tensor& gu, const Tensor& out) {
  switch (gu.dtype()) {
    case DType::F32:
      return launch_forward<float>(gu, out);
    case DType::F64:
      return launch_forward<double>(gu, out);
    case DType::BF16:
      return launch_forward<bf16>(gu, out);
    default:
      FG_THROW("swiglu: dtype ", dtype_name(gu.dtype()), " is not supported");
  }
}

void swiglu_backward_cuda(const Tensor& dout, const Tensor& gu, const Tensor& dgu) {
  switch (gu.dtype()) {
    case DType::F32:
      return launch_backward<float>(dout, gu, dgu);
    case DType::F64:
      return launch_backward<double>(dout, gu, dgu);
    case DType::BF16:
      return launch_backward<bf16>(dout, gu, dgu);
    default:
      FG_THROW("swiglu_backward: dtype ", dtype_name(gu.dtype()), " is not supported");
  }
}

}  // namespace fg::ops::detail
