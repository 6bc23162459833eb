// SwiGLU on the GPU: each thread takes a 16-byte pack of outputs of (rows, F)
// (one element when F or the buffers do not allow it), reading the gate g and
// up u from the two halves of gu's row; fp32 math for f32 and bf16.
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/swiglu/swiglu.h"

namespace fg::ops::detail {
namespace {

constexpr int kBlock = 256;

// exp(100) = inf gives 0, not NaN. fp32: the hardware's exp2 (2 ulp, as expf)
// and a correctly rounded reciprocal, a third of expf's and the division's
// instructions (these passes are as much issue- as bandwidth-bound).
__device__ __forceinline__ float sigmoid(float x) {
  return __frcp_rn(1.f + exp2f(x * -1.4426950408889634f));
}
__device__ __forceinline__ double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

// V consecutive elements, loaded and stored as one 16-byte access when V > 1.
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// out (rows, F) = silu(g) * u with gu (rows, 2F) = [g | u]; each thread takes V
// consecutive outputs (the row index is divided out once per V).
template <class T, int V>
__global__ void swiglu_forward_kernel(const T* gu, T* out, int64_t rows, int64_t f) {
  const int64_t fv = f / V;
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * fv) return;
  int64_t r = i / fv, j = (i - r * fv) * V;
  const Pack<T, V> g = *reinterpret_cast<const Pack<T, V>*>(gu + r * 2 * f + j);
  const Pack<T, V> u = *reinterpret_cast<const Pack<T, V>*>(gu + r * 2 * f + f + j);
  Pack<T, V> o;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    auto gk = to_compute(g.v[k]);
    o.v[k] = from_compute<T>(gk * sigmoid(gk) * to_compute(u.v[k]));
  }
  *reinterpret_cast<Pack<T, V>*>(out + i * V) = o;
}

// dgu (rows, 2F) = [dout u s (1 + g (1 - s)) | dout g s] with s = sigmoid(g).
template <class T, int V>
__global__ void swiglu_backward_kernel(const T* dout, const T* gu, T* dgu, int64_t rows,
                                       int64_t f) {
  const int64_t fv = f / V;
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * fv) return;
  int64_t r = i / fv, gi = r * 2 * f + (i - r * fv) * V, ui = gi + f;
  const Pack<T, V> g = *reinterpret_cast<const Pack<T, V>*>(gu + gi);
  const Pack<T, V> u = *reinterpret_cast<const Pack<T, V>*>(gu + ui);
  const Pack<T, V> d = *reinterpret_cast<const Pack<T, V>*>(dout + i * V);
  Pack<T, V> dg, du;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    auto gk = to_compute(g.v[k]), uk = to_compute(u.v[k]), dk = to_compute(d.v[k]);
    auto sk = sigmoid(gk);
    dg.v[k] = from_compute<T>(dk * uk * sk * (1 + gk * (1 - sk)));
    du.v[k] = from_compute<T>(dk * gk * sk);
  }
  *reinterpret_cast<Pack<T, V>*>(dgu + gi) = dg;
  *reinterpret_cast<Pack<T, V>*>(dgu + ui) = du;
}

// 16-byte packs when every row start is aligned to one (F a multiple of the pack
// and the buffers aligned); single elements otherwise.
template <class T>
constexpr int kPack = sizeof(T) <= 4 ? static_cast<int>(16 / sizeof(T)) : 1;

bool packable(int64_t f, int pack, std::initializer_list<const Tensor*> ts) {
  if (pack == 1 || f % pack != 0) return false;
  for (const Tensor* t : ts)
    if (reinterpret_cast<uintptr_t>(t->raw_data()) % 16 != 0) return false;
  return true;
}

template <class T>
void launch_forward(const Tensor& gu, const Tensor& out) {
  int64_t f = out.size(-1), total = out.numel();
  if (total == 0) return;
  auto launch = [&]<int V>() {
    swiglu_forward_kernel<T, V><<<cuda::grid_for(total / V, kBlock), kBlock, 0, cuda::stream()>>>(
        gu.data<T>(), out.data<T>(), total / f, f);
  };
  if (packable(f, kPack<T>, {&gu, &out}))
    launch.template operator()<kPack<T>>();
  else
    launch.template operator()<1>();
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void launch_backward(const Tensor& dout, const Tensor& gu, const Tensor& dgu) {
  int64_t f = dout.size(-1), total = dout.numel();
  if (total == 0) return;
  auto launch = [&]<int V>() {
    swiglu_backward_kernel<T, V><<<cuda::grid_for(total / V, kBlock), kBlock, 0, cuda::stream()>>>(
        dout.data<T>(), gu.data<T>(), dgu.data<T>(), total / f, f);
  };
  if (packable(f, kPack<T>, {&dout, &gu, &dgu}))
    launch.template operator()<kPack<T>>();
  else
    launch.template operator()<1>();
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
