// Embedding on the GPU: a row gather forward; backward scatter-adds rows with
// atomics into an accumulator (fp32 for bf16 gradients, which are rounded once
// at the end). Ids are not range-checked on the host (that would need a sync):
// a bad id reads as a NaN row and adds to no row.
#include <cmath>

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

// acc (V, D) += grad_out (n, D) scattered by ids; repeated ids meet in the atomics.
template <class T, class Acc>
__global__ void embedding_backward_kernel(const T* grad_out, const int32_t* ids, Acc* acc,
                                          int64_t n, int64_t dim, int64_t vocab) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * dim) return;
  int64_t id = ids[i / dim], col = i % dim;
  if (id < 0 || id >= vocab) return;
  atomicAdd(acc + id * dim + col, static_cast<Acc>(to_compute(grad_out[i])));
}

template <class T>
void launch_forward(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  int64_t n = ids.numel(), dim = weight.size(1), total = n * dim;
  if (total == 0) return;
  embedding_forward_kernel<T><<<cuda::grid_for(total, kBlock), kBlock, 0, cuda::stream()>>>(
      weight.data<T>(), ids.data<int32_t>(), out.data<T>(), n, dim, weight.size(0));
  FG_CUDA_CHECK(cudaGetLastError());
}

// acc: contiguous (V, D) in Acc, already zeroed.
template <class T, class Acc>
void launch_backward(const Tensor& grad_out, const Tensor& ids, const Tensor& acc) {
  int64_t n = ids.numel(), dim = acc.size(1), total = n * dim;
  if (total == 0) return;
  embedding_backward_kernel<T, Acc><<<cuda::grid_for(total, kBlock), kBlock, 0, cuda::stream()>>>(
      grad_out.data<T>(), ids.data<int32_t>(), acc.data<Acc>(), n, dim, acc.size(0));
  FG_CUDA_CHECK(cudaGetLastError());
}

void zero(const Tensor& t) {
  FG_CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, t.nbytes(), cuda::stream()));  // 0 bits = 0.0
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

void embedding_backward_cuda(const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight) {
  switch (grad_weight.dtype()) {
    case DType::F32:
      zero(grad_weight);
      return launch_backward<float, float>(grad_out, ids, grad_weight);
    case DType::F64:
      zero(grad_weight);
      return launch_backward<double, double>(grad_out, ids, grad_weight);
    case DType::BF16: {
      // bf16 atomics would round at every add; sum in fp32 and round once.
      Tensor acc = Tensor::empty(grad_weight.shape(), DType::F32, grad_weight.device());
      zero(acc);
      launch_backward<bf16, float>(grad_out, ids, acc);
      grad_weight.copy_(acc);
      return;
    }
    default:
      FG_THROW("embedding_backward: dtype ", dtype_name(grad_weight.dtype()), " is not supported");
  }
}

}  // namespace fg::ops::detail
