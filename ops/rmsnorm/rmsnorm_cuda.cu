// RMSNorm row kernels on the GPU, shared by rmsnorm, add_rmsnorm and
// rmsnorm_qkv_rope: forward (optionally with the residual add), apply (the
// normalized rows from a saved rstd) and backward. Statistics in fp32 (f64 for f64);
// 16-byte packed loads when every row starts aligned; 64-bit offsets.
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>
#include <type_traits>

#include "core/cuda_utils.h"
#include "ops/rmsnorm/rmsnorm.h"

namespace fg::ops::detail {
namespace {

constexpr int kWarp = 32;
constexpr int kForwardWarps = 4;     // forward: one warp per row, 4 rows per block
constexpr int kBackwardBlock = 256;  // backward: one block per group of rows
constexpr int kColumnBlock = 256;    // dweight: one thread per column
constexpr int kVecBytes = 16;        // one packed load or store
constexpr int kDefaultSharedBytes = 48 * 1024;

// Accumulation and statistics type: fp32 for f32 and bf16, f64 for f64.
template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <class T>
using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) {
  return v;
}
__device__ __forceinline__ double to_acc(double v) {
  return v;
}
__device__ __forceinline__ float to_acc(bf16 v) {
  return bf16_to_float(v);
}
template <class T, class A>
__device__ __forceinline__ T from_acc(A v) {
  if constexpr (std::is_same_v<T, bf16>) {
    return float_to_bf16(v);
  } else {
    return static_cast<T>(v);
  }
}

__device__ __forceinline__ float rsqrt_acc(float v) {
  return rsqrtf(v);
}
__device__ __forceinline__ double rsqrt_acc(double v) {
  return rsqrt(v);
}

// kVec consecutive elements moved as one access (16 bytes when kVec = 16 / sizeof(T)).
template <class T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};
template <int kVec, class T>
__device__ __forceinline__ Pack<T, kVec> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, kVec>*>(p);
}
template <int kVec, class T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, kVec>& v) {
  *reinterpret_cast<Pack<T, kVec>*>(p) = v;
}

// One warp per row. Pass 1 forms h (x + residual, rounded to T and stored, so the
// statistics and y describe exactly the h that backward will see) and its sum of
// squares; pass 2 rereads the row (now in L1/L2) and writes y = h * rstd * weight.
// With kHaveRstd the statistics are read instead: backward recomputing n.
template <class T, int kVec, bool kResidual, bool kHaveRstd>
__global__ void rmsnorm_forward_kernel(const T* x, const T* residual, const T* weight, T* h, T* y,
                                       acc_t<T>* rstd, int64_t rows, int64_t D, acc_t<T> eps) {
  using A = acc_t<T>;
  using WarpReduce = cub::WarpReduce<A>;
  __shared__ typename WarpReduce::TempStorage reduce_storage[kForwardWarps];
  const int64_t row = blockIdx.x * static_cast<int64_t>(kForwardWarps) + threadIdx.y;
  if (row >= rows) return;  // the whole warp leaves together
  const int64_t base = row * D;
  const T* src = x + base;  // the row's h
  A r;
  if constexpr (kHaveRstd) {
    r = rstd[row];
  } else {
    A ss = 0;
    for (int64_t c = threadIdx.x * kVec; c < D; c += kWarp * kVec) {
      Pack<T, kVec> hv = load_pack<kVec>(x + base + c);
      if constexpr (kResidual) {
        const Pack<T, kVec> rv = load_pack<kVec>(residual + base + c);
#pragma unroll
        for (int j = 0; j < kVec; ++j) hv.v[j] = from_acc<T>(to_acc(hv.v[j]) + to_acc(rv.v[j]));
        store_pack<kVec>(h + base + c, hv);
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const A v = to_acc(hv.v[j]);
        ss += v * v;
      }
    }
    ss = WarpReduce(reduce_storage[threadIdx.y]).Sum(ss);  // valid in lane 0
    r = rsqrt_acc(__shfl_sync(0xffffffffu, ss, 0) / static_cast<A>(D) + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    if constexpr (kResidual) src = h + base;  // this thread wrote these very elements
  }
  for (int64_t c = threadIdx.x * kVec; c < D; c += kWarp * kVec) {
    const Pack<T, kVec> hv = load_pack<kVec>(src + c), wv = load_pack<kVec>(weight + c);
    Pack<T, kVec> out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) out.v[j] = from_acc<T>(to_acc(hv.v[j]) * r * to_acc(wv.v[j]));
    store_pack<kVec>(y + base + c, out);
  }
}

// One block per group of rows (grid-stride over rows). Per row: a block-wide sum of
// g * xhat, then dx. Thread t owns the same columns in every row, so its dweight
// partial sums sit in shared memory without atomics; each block writes its partial
// row and rmsnorm_dweight_kernel adds them in a fixed order (deterministic).
template <class T, int kVec, bool kDh>
__global__ void __launch_bounds__(kBackwardBlock)
    rmsnorm_backward_kernel(const T* dy, const T* dh, const T* x, const T* weight,
                            const acc_t<T>* rstd, T* dx, acc_t<T>* partial, int64_t rows,
                            int64_t D) {
  using A = acc_t<T>;
  using BlockReduce = cub::BlockReduce<A, kBackwardBlock>;
  __shared__ typename BlockReduce::TempStorage reduce_storage;
  __shared__ A row_mean[2];  // alternating rows: one barrier per row suffices
  extern __shared__ __align__(16) unsigned char shared_raw[];
  A* dw = reinterpret_cast<A*>(shared_raw);  // (D) this block's dweight partial
  constexpr int64_t stride = static_cast<int64_t>(kBackwardBlock) * kVec;
  for (int64_t c = threadIdx.x * kVec; c < D; c += stride)
#pragma unroll
    for (int j = 0; j < kVec; ++j) dw[c + j] = 0;
  for (int64_t row = blockIdx.x, i = 0; row < rows; row += gridDim.x, ++i) {
    const int64_t base = row * D;
    const A r = rstd[row];
    A dot = 0;
    for (int64_t c = threadIdx.x * kVec; c < D; c += stride) {
      const Pack<T, kVec> dyv = load_pack<kVec>(dy + base + c), xv = load_pack<kVec>(x + base + c),
                          wv = load_pack<kVec>(weight + c);
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        dot += to_acc(wv.v[j]) * to_acc(dyv.v[j]) * (to_acc(xv.v[j]) * r);
    }
    // The sum is valid in thread 0, which shares it. The barrier also frees
    // reduce_storage for the next row, and row_mean[i % 2] is written again only two
    // rows on, after every thread has passed the next row's barrier.
    dot = BlockReduce(reduce_storage).Sum(dot);
    if (threadIdx.x == 0) row_mean[i % 2] = dot / static_cast<A>(D);
    __syncthreads();
    const A mean = row_mean[i % 2];
    for (int64_t c = threadIdx.x * kVec; c < D; c += stride) {
      const Pack<T, kVec> dyv = load_pack<kVec>(dy + base + c), xv = load_pack<kVec>(x + base + c),
                          wv = load_pack<kVec>(weight + c);
      Pack<T, kVec> dhv;
      if constexpr (kDh) dhv = load_pack<kVec>(dh + base + c);
      Pack<T, kVec> out;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const A xhat = to_acc(xv.v[j]) * r, g = to_acc(wv.v[j]) * to_acc(dyv.v[j]);
        A v = r * (g - xhat * mean);
        if constexpr (kDh) v += to_acc(dhv.v[j]);
        out.v[j] = from_acc<T>(v);
        dw[c + j] += to_acc(dyv.v[j]) * xhat;
      }
      store_pack<kVec>(dx + base + c, out);
    }
  }
  for (int64_t c = threadIdx.x * kVec; c < D; c += stride)
#pragma unroll
    for (int j = 0; j < kVec; ++j) partial[blockIdx.x * D + c + j] = dw[c + j];
}

// dweight[c] = sum over the backward grid's partial rows (groups, D), in order.
template <class T>
__global__ void rmsnorm_dweight_kernel(const acc_t<T>* partial, int64_t groups, int64_t D,
                                       T* dweight) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= D) return;
  acc_t<T> s = 0;
  for (int64_t g = 0; g < groups; ++g) s += partial[g * D + c];
  dweight[c] = from_acc<T>(s);
}

// Runs f.template operator()<T>() for the tensor dtypes the GPU kernels take.
template <class F>
void dispatch_gpu_float(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32:
      return f.template operator()<float>();
    case DType::F64:
      return f.template operator()<double>();
    case DType::BF16:
      return f.template operator()<bf16>();
    default:
      FG_THROW(op, ": dtype ", dtype_name(dtype), " is not supported on the GPU");
  }
}

// Rows of D elements can move in 16-byte packs when D is a multiple of the pack
// and every row pointer starts on a 16-byte boundary.
template <class T>
constexpr int kPackOf = kVecBytes / static_cast<int>(sizeof(T));

template <class T>
bool packable(int64_t D, std::initializer_list<const void*> ptrs) {
  if (D % kPackOf<T> != 0) return false;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % kVecBytes != 0) return false;
  return true;
}

template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

template <class T, bool kResidual, bool kHaveRstd>
void launch_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps,
                    const Tensor& h, const Tensor& y, const Tensor& rstd) {
  using A = acc_t<T>;
  const int64_t D = weight.numel(), rows = x.numel() / D;
  if (rows == 0) return;
  const T* px = x.data<T>();
  const T* pres = ptr_or_null<T>(residual);
  const T* pw = weight.data<T>();
  T* ph = kResidual ? h.data<T>() : nullptr;
  T* py = y.data<T>();
  A* pr = rstd.data<A>();
  const dim3 block(kWarp, kForwardWarps);
  const unsigned grid = cuda::grid_for(rows, kForwardWarps);
  if (packable<T>(D, {px, pres, pw, ph, py})) {
    rmsnorm_forward_kernel<T, kPackOf<T>, kResidual, kHaveRstd><<<grid, block, 0, cuda::stream()>>>(
        px, pres, pw, ph, py, pr, rows, D, static_cast<A>(eps));
  } else {
    rmsnorm_forward_kernel<T, 1, kResidual, kHaveRstd><<<grid, block, 0, cuda::stream()>>>(
        px, pres, pw, ph, py, pr, rows, D, static_cast<A>(eps));
  }
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class T, int kVec, bool kDh>
void launch_backward_rows(const Tensor& dy, const Tensor& dh, const Tensor& x, const Tensor& weight,
                          const Tensor& rstd, const Tensor& dx, const Tensor& dweight) {
  using A = acc_t<T>;
  const int64_t D = weight.numel(), rows = x.numel() / D;
  const int device = x.device().index;
  auto kernel = rmsnorm_backward_kernel<T, kVec, kDh>;

  // The dweight partial (D) lives in dynamic shared memory, beyond 48 KB by opt-in.
  const size_t shared = static_cast<size_t>(D) * sizeof(A);
  int max_shared = 0, sms = 0;
  FG_CUDA_CHECK(
      cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  FG_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  cudaFuncAttributes attr{};
  FG_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  FG_CHECK(shared + attr.sharedSizeBytes <= static_cast<size_t>(max_shared),
           "rmsnorm_backward: rows of ", D, " elements need ", shared + attr.sharedSizeBytes,
           " bytes of shared memory per block, more than this GPU's ", max_shared);
  if (shared > static_cast<size_t>(kDefaultSharedBytes))
    FG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(shared)));
  // As many row groups as fit on the GPU at once, at most one per row.
  int per_sm = 0;
  FG_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kBackwardBlock, shared));
  const int64_t groups = std::min<int64_t>(rows, static_cast<int64_t>(std::max(per_sm, 1)) * sms);

  Tensor partial =
      Tensor::empty({groups, D}, rmsnorm_stat_dtype(x.dtype()), x.device());  // (groups, D)
  kernel<<<static_cast<unsigned>(groups), kBackwardBlock, shared, cuda::stream()>>>(
      dy.data<T>(), ptr_or_null<T>(dh), x.data<T>(), weight.data<T>(), rstd.data<A>(), dx.data<T>(),
      partial.data<A>(), rows, D);
  FG_CUDA_CHECK(cudaGetLastError());
  rmsnorm_dweight_kernel<T><<<cuda::grid_for(D, kColumnBlock), kColumnBlock, 0, cuda::stream()>>>(
      partial.data<A>(), groups, D, dweight.data<T>());
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class T, bool kDh>
void launch_backward(const Tensor& dy, const Tensor& dh, const Tensor& x, const Tensor& weight,
                     const Tensor& rstd, const Tensor& dx, const Tensor& dweight) {
  const int64_t D = weight.numel();
  if (packable<T>(D, {dy.raw_data(), kDh ? dh.raw_data() : nullptr, x.raw_data(), weight.raw_data(),
                      dx.raw_data()})) {
    launch_backward_rows<T, kPackOf<T>, kDh>(dy, dh, x, weight, rstd, dx, dweight);
  } else {
    launch_backward_rows<T, 1, kDh>(dy, dh, x, weight, rstd, dx, dweight);
  }
}

}  // namespace

void rmsnorm_rows_forward_cuda(const Tensor& x, const Tensor& residual, const Tensor& weight,
                               double eps, const Tensor& h, const Tensor& y, const Tensor& rstd) {
  dispatch_gpu_float("rmsnorm", x.dtype(), [&]<class T>() {
    if (residual.defined()) {
      launch_forward<T, true, false>(x, residual, weight, eps, h, y, rstd);
    } else {
      launch_forward<T, false, false>(x, residual, weight, eps, h, y, rstd);
    }
  });
}

void rmsnorm_rows_apply_cuda(const Tensor& x, const Tensor& weight, const Tensor& rstd,
                             const Tensor& y) {
  dispatch_gpu_float("rmsnorm", x.dtype(), [&]<class T>() {
    launch_forward<T, false, true>(x, Tensor(), weight, 0.0, Tensor(), y, rstd);
  });
}

void rmsnorm_rows_backward_cuda(const Tensor& dy, const Tensor& dh, const Tensor& x,
                                const Tensor& weight, const Tensor& rstd, const Tensor& dx,
                                const Tensor& dweight) {
  const int64_t rows = x.numel() / weight.numel();
  if (rows == 0) {
    dweight.zero_();
    return;
  }
  dispatch_gpu_float("rmsnorm_backward", x.dtype(), [&]<class T>() {
    if (dh.defined()) {
      launch_backward<T, true>(dy, dh, x, weight, rstd, dx, dweight);
    } else {
      launch_backward<T, false>(dy, dh, x, weight, rstd, dx, dweight);
    }
  });
}

}  // namespace fg::ops::detail
