// Elementwise add on the GPU: one thread per element, any float dtype.
#include "core/cuda_utils.h"
#include "ops/add/add.h"

namespace fg::ops::detail {
namespace {

constexpr int kBlock = 256;

template <class T>
__global__ void add_kernel(const T* a, const T* b, T* out, int64_t n) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  if constexpr (std::is_same_v<T, bf16>) {
    out[i] = float_to_bf16(bf16_to_float(a[i]) + bf16_to_float(b[i]));
  } else {
    out[i] = a[i] + b[i];
  }
}

template <class T>
void launch_add(const Tensor& a, const Tensor& b, const Tensor& out) {
  int64_t n = out.numel();
  if (n == 0) return;
  add_kernel<T><<<cuda::grid_for(n, kBlock), kBlock, 0, cuda::stream()>>>(
      a.data<T>(), b.data<T>(), out.data<T>(), n);
  FG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void add_cuda(const Tensor& a, const Tensor& b, const Tensor& out) {
  switch (out.dtype()) {
    case DType::F32: return launch_add<float>(a, b, out);
    case DType::F64: return launch_add<double>(a, b, out);
    case DType::BF16: return launch_add<bf16>(a, b, out);
    default: FG_THROW("add: dtype ", dtype_name(out.dtype()), " is not supported");
  }
}

}  // namespace fg::ops::detail
