// The CUDA side of Tensor: one strided gather/scatter kernel serves contiguous(),
// dtype conversion and copy_; plus fill, arange and the Philox draws.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "core/tensor_cuda.h"

namespace fg::detail {
namespace {

constexpr int kBlock = 256;
constexpr int kMaxDims = 8;

struct StridedLayout {
  int ndim;
  int64_t shape[kMaxDims];
  int64_t src_strides[kMaxDims];
  int64_t dst_strides[kMaxDims];
};

__device__ __forceinline__ double load_elem(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::BF16: return bf16_to_float(static_cast<const bf16*>(p)[i]);
    case DType::I32: return static_cast<const int32_t*>(p)[i];
  }
  return 0;
}

__device__ __forceinline__ void store_elem(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::F64: static_cast<double*>(p)[i] = v; break;
    case DType::BF16: static_cast<bf16*>(p)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
  }
}

__global__ void strided_copy_kernel(const void* src, DType src_t, void* dst, DType dst_t,
                                    StridedLayout layout, int64_t n) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  int64_t rem = i, so = 0, d_off = 0;
  for (int d = layout.ndim - 1; d >= 0; --d) {
    int64_t c = rem % layout.shape[d];
    rem /= layout.shape[d];
    so += c * layout.src_strides[d];
    d_off += c * layout.dst_strides[d];
  }
  store_elem(dst, dst_t, d_off, load_elem(src, src_t, so));
}

// Contiguous to contiguous with a dtype change (the weight and gradient casts of
// mixed precision): the strided kernel's index arithmetic would dominate.
__global__ void convert_kernel(const void* src, DType src_t, void* dst, DType dst_t, int64_t n) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) store_elem(dst, dst_t, i, load_elem(src, src_t, i));
}

// The two casts of mixed precision (f32 master weights to bf16, bf16 gradients
// to f32), 8 elements per thread in whole-pack loads and stores.
template <class S, class D>
__global__ void cast_pack_kernel(const S* src, D* dst, int64_t packs) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= packs) return;
  const Pack<S, 8> in = load_pack<8>(src + i * 8);
  Pack<D, 8> out;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    if constexpr (std::is_same_v<D, bf16>)
      out.v[k] = float_to_bf16(in.v[k]);
    else
      out.v[k] = bf16_to_float(in.v[k]);
  }
  store_pack<8>(dst + i * 8, out);
}

template <class S, class D>
bool try_cast_pack(const Tensor& src, const Tensor& dst, int64_t n) {
  if (n % 8 != 0 || !src.starts_aligned(8 * sizeof(S)) || !dst.starts_aligned(8 * sizeof(D)))
    return false;
  cast_pack_kernel<S, D><<<cuda::grid_for(n / 8, kBlock), kBlock, 0, cuda::stream()>>>(
      static_cast<const S*>(src.raw_data()), static_cast<D*>(dst.raw_data()), n / 8);
  return true;
}

__global__ void fill_kernel(void* dst, DType t, StridedLayout layout, int64_t n, double value) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  int64_t rem = i, off = 0;
  for (int d = layout.ndim - 1; d >= 0; --d) {
    off += (rem % layout.shape[d]) * layout.dst_strides[d];
    rem /= layout.shape[d];
  }
  store_elem(dst, t, off, value);
}

__global__ void arange_kernel(void* dst, DType t, int64_t n) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) store_elem(dst, t, i, static_cast<double>(i));
}

__global__ void philox_kernel(void* dst, DType t, int64_t n, uint64_t seed, uint64_t offset,
                              bool normal, double a, double b) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  double v = normal ? a + b * philox_normal(seed, offset, i)
                    : a + (b - a) * (1.0 - philox_uniform(seed, offset, i));
  store_elem(dst, t, i, v);
}

StridedLayout make_layout(const Tensor& dst, const Tensor* src) {
  FG_CHECK(dst.dim() <= kMaxDims, "tensor ", dst.shape_str(), " has more than ", kMaxDims,
           " dimensions");
  StridedLayout l{};
  l.ndim = dst.dim();
  for (int d = 0; d < l.ndim; ++d) {
    l.shape[d] = dst.shape()[d];
    l.dst_strides[d] = dst.strides()[d];
    l.src_strides[d] = src ? src->strides()[d] : 0;
  }
  return l;
}

}  // namespace

void cuda_strided_copy(const Tensor& src, const Tensor& dst) {
  int64_t n = dst.numel();
  if (n == 0) return;
  if (src.is_contiguous() && dst.is_contiguous() && src.dtype() == dst.dtype()) {
    FG_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(),
                                  cudaMemcpyDeviceToDevice, cuda::stream()));
    return;
  }
  if (src.is_contiguous() && dst.is_contiguous()) {
    const bool packed =
        (src.dtype() == DType::F32 && dst.dtype() == DType::BF16 && try_cast_pack<float, bf16>(src, dst, n)) ||
        (src.dtype() == DType::BF16 && dst.dtype() == DType::F32 && try_cast_pack<bf16, float>(src, dst, n));
    if (packed) {
      FG_CUDA_CHECK(cudaGetLastError());
      return;
    }
    convert_kernel<<<cuda::grid_for(n, kBlock), kBlock, 0, cuda::stream()>>>(
        src.raw_data(), src.dtype(), dst.raw_data(), dst.dtype(), n);
    FG_CUDA_CHECK(cudaGetLastError());
    return;
  }
  strided_copy_kernel<<<cuda::grid_for(n, kBlock), kBlock, 0, cuda::stream()>>>(
      src.raw_data(), src.dtype(), dst.raw_data(), dst.dtype(), make_layout(dst, &src), n);
  FG_CUDA_CHECK(cudaGetLastError());
}

void cuda_fill(const Tensor& dst, double value) {
  int64_t n = dst.numel();
  if (n == 0) return;
  if (value == 0 && !std::signbit(value) && dst.is_contiguous()) {  // zeros are all-zero bits
    FG_CUDA_CHECK(cudaMemsetAsync(dst.raw_data(), 0, dst.nbytes(), cuda::stream()));
    return;
  }
  fill_kernel<<<cuda::grid_for(n, kBlock), kBlock, 0, cuda::stream()>>>(
      dst.raw_data(), dst.dtype(), make_layout(dst, nullptr), n, value);
  FG_CUDA_CHECK(cudaGetLastError());
}

void cuda_arange(const Tensor& dst) {
  int64_t n = dst.numel();
  if (n == 0) return;
  arange_kernel<<<cuda::grid_for(n, kBlock), kBlock, 0, cuda::stream()>>>(dst.raw_data(),
                                                                          dst.dtype(), n);
  FG_CUDA_CHECK(cudaGetLastError());
}

void cuda_philox_fill(const Tensor& dst, uint64_t seed, uint64_t offset, bool normal, double a,
                      double b) {
  int64_t n = dst.numel();
  if (n == 0) return;
  philox_kernel<<<cuda::grid_for(n, kBlock), kBlock, 0, cuda::stream()>>>(
      dst.raw_data(), dst.dtype(), n, seed, offset, normal, a, b);
  FG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fg::detail
