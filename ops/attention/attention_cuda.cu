// Causal GQA attention on the GPU: a simple, exact kernel set, the fallback
// for what the flash kernels (flash_attention_cuda.cu) do not cover and their
// reference in the tests; the dispatch between the two sits at the end. One
// warp owns one row (a query row in the forward and dq passes, a key row in
// the dk/dv pass); the block's warps share 32-row tiles of the other side in
// shared memory, lane j scoring row j of the tile. No (T, T) matrix is ever
// stored: the forward keeps an online softmax, backward recomputes
// P = exp(S - lse). dk and dv come from their own pass over the queries
// (summing the query heads of the group), so there are no atomics and results
// are deterministic. bf16/f32 inputs compute in f32, f64 in f64.
#include <cuda_bf16.h>

#include <cmath>

#include "core/cuda_utils.h"
#include "ops/attention/attention.h"

namespace fg::ops::detail {
namespace {

constexpr int kWarp = 32;
constexpr int kTile = 32;  // rows per shared tile: one per lane
constexpr int kWarps = 8;  // rows owned per block, one per warp
constexpr int kBlock = kWarps * kWarp;
constexpr int kRegs = 8;                    // head_dim values per lane
constexpr int kMaxHeadDim = kRegs * kWarp;  // 256
constexpr unsigned kFullMask = 0xffffffffu;

template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <class Acc, class T>
__device__ __forceinline__ Acc to_acc(T x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return bf16_to_float(x);
  } else {
    return static_cast<Acc>(x);
  }
}

template <class T, class Acc>
__device__ __forceinline__ T from_acc(Acc x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return float_to_bf16(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

template <class Acc>
__device__ __forceinline__ Acc warp_sum(Acc x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

template <class Acc>
__device__ __forceinline__ Acc warp_max(Acc x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x = max(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

// Shapes of one call, shared by the kernels.
struct Dims {
  int seq, heads, kv_heads, head_dim;
  int64_t q_row, kv_row;  // elements between consecutive positions: H*hd, Hkv*hd
};

// Tiles are padded to head_dim + 1 so that lanes reading different rows of the
// same column (the scoring dot products) hit different banks.
__host__ __device__ inline int tile_ld(int head_dim) {
  return head_dim + 1;
}

// Rows [row0, row0 + kTile) of one head into a (kTile, ld) shared tile; rows at
// or past `rows` become 0 so that a masked lane never reads garbage.
template <class T, class Acc>
__device__ void load_tile(Acc* tile, const T* head_base, int64_t row_stride, int row0, int rows,
                          int head_dim) {
  int ld = tile_ld(head_dim);
  for (int idx = threadIdx.x; idx < kTile * head_dim; idx += blockDim.x) {
    int r = idx / head_dim, i = idx - r * head_dim;
    int row = row0 + r;
    tile[r * ld + i] = row < rows ? to_acc<Acc>(head_base[row * row_stride + i]) : Acc(0);
  }
}

// One row of head_dim values into this warp's shared slot, times `scale`.
template <class T, class Acc>
__device__ void load_row(Acc* dst, const T* src, int head_dim, Acc scale, int lane) {
  for (int i = lane; i < head_dim; i += kWarp) dst[i] = to_acc<Acc>(src[i]) * scale;
}

// a (a warp's row, read as a broadcast) . b (this lane's tile row). Four partial
// sums so that the multiply-adds do not wait on each other.
template <class Acc>
__device__ __forceinline__ Acc dot(const Acc* a, const Acc* b, int head_dim) {
  Acc s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int i = 0;
  for (; i + 4 <= head_dim; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < head_dim; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

// acc[r] += sum over tile rows j in [first, end) of w_j * tile[j][lane + 32 r], where
// w_j is lane j's weight; the range is the same for the whole warp.
template <class Acc>
__device__ __forceinline__ void accumulate_rows(Acc (&acc)[kRegs], Acc w, const Acc* tile,
                                                int first, int end, int head_dim, int lane) {
  int ld = tile_ld(head_dim);
  for (int j = first; j < end; ++j) {
    Acc wj = __shfl_sync(kFullMask, w, j);
    const Acc* row = tile + j * ld;
#pragma unroll
    for (int r = 0; r < kRegs; ++r) {
      int i = lane + r * kWarp;
      if (i < head_dim) acc[r] += wj * row[i];
    }
  }
}

template <class T, class Acc>
__device__ void store_row(T* dst, const Acc (&acc)[kRegs], Acc scale, int head_dim, int lane) {
#pragma unroll
  for (int r = 0; r < kRegs; ++r) {
    int i = lane + r * kWarp;
    if (i < head_dim) dst[i] = from_acc<T>(acc[r] * scale);
  }
}

// Forward: grid (ceil(T / kWarps), H, B); warp w owns query row blockIdx.x * kWarps + w.
// Online softmax over key tiles: running max m, running sum l, rescaled output o.
template <class T, class Acc>
__global__ void attention_forward_kernel(const T* q, const T* k, const T* v, T* out, Acc* lse,
                                         Dims d, Acc scale) {
  extern __shared__ unsigned char smem_raw[];
  const int ld = tile_ld(d.head_dim);
  Acc* k_tile = reinterpret_cast<Acc*>(smem_raw);  // (kTile, ld)
  Acc* v_tile = k_tile + kTile * ld;               // (kTile, ld)
  Acc* q_rows = v_tile + kTile * ld;               // (kWarps, hd), pre-scaled
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int b = blockIdx.z, h = blockIdx.y, g = h / (d.heads / d.kv_heads);
  const int row0 = blockIdx.x * kWarps, t = row0 + warp;
  const bool active = t < d.seq;
  const T* q_head = q + static_cast<int64_t>(b) * d.seq * d.q_row + h * d.head_dim;
  const T* k_head = k + static_cast<int64_t>(b) * d.seq * d.kv_row + g * d.head_dim;
  const T* v_head = v + static_cast<int64_t>(b) * d.seq * d.kv_row + g * d.head_dim;
  Acc* my_q = q_rows + warp * d.head_dim;
  if (active) load_row(my_q, q_head + t * d.q_row, d.head_dim, scale, lane);

  Acc m = -INFINITY, l = 0, o[kRegs] = {};
  const int last = min(row0 + kWarps, d.seq) - 1;  // the block's last row sees keys <= last
  for (int key0 = 0; key0 <= last; key0 += kTile) {
    __syncthreads();  // everyone is done with the previous tile (and my_q is visible)
    load_tile(k_tile, k_head, d.kv_row, key0, d.seq, d.head_dim);
    load_tile(v_tile, v_head, d.kv_row, key0, d.seq, d.head_dim);
    __syncthreads();
    const int n = active ? min(kTile, t - key0 + 1) : 0;  // keys of this tile row t sees
    if (n <= 0) continue;
    Acc s = lane < n ? dot(my_q, k_tile + lane * ld, d.head_dim) : Acc(-INFINITY);
    Acc m_new = max(m, warp_max(s));
    Acc alpha = exp(m - m_new);
    Acc p = lane < n ? exp(s - m_new) : Acc(0);
    l = l * alpha + warp_sum(p);
#pragma unroll
    for (int r = 0; r < kRegs; ++r) o[r] *= alpha;
    accumulate_rows(o, p, v_tile, 0, n, d.head_dim, lane);
    m = m_new;
  }
  if (!active) return;
  store_row(out + static_cast<int64_t>(b) * d.seq * d.q_row + t * d.q_row + h * d.head_dim, o,
            Acc(1) / l, d.head_dim, lane);
  if (lane == 0) lse[(static_cast<int64_t>(b) * d.heads + h) * d.seq + t] = m + log(l);
}

// Backward, pass 1: dq and D = rowsum(dout * out). Same grid and tiling as the
// forward: dS_j = P_j (dP_j - D) with P_j = exp(S_j - lse), dP_j = dout . v_j;
// dq = scale * sum_j dS_j k_j.
template <class T, class Acc>
__global__ void attention_backward_dq_kernel(const T* dout, const T* q, const T* k, const T* v,
                                             const T* out, const Acc* lse, T* dq, Acc* delta,
                                             Dims d, Acc scale) {
  extern __shared__ unsigned char smem_raw[];
  const int ld = tile_ld(d.head_dim);
  Acc* k_tile = reinterpret_cast<Acc*>(smem_raw);  // (kTile, ld)
  Acc* v_tile = k_tile + kTile * ld;               // (kTile, ld)
  Acc* q_rows = v_tile + kTile * ld;               // (kWarps, hd), pre-scaled
  Acc* do_rows = q_rows + kWarps * d.head_dim;     // (kWarps, hd)
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int b = blockIdx.z, h = blockIdx.y, g = h / (d.heads / d.kv_heads);
  const int row0 = blockIdx.x * kWarps, t = row0 + warp;
  const bool active = t < d.seq;
  const int64_t q_off = static_cast<int64_t>(b) * d.seq * d.q_row + h * d.head_dim;
  const T* k_head = k + static_cast<int64_t>(b) * d.seq * d.kv_row + g * d.head_dim;
  const T* v_head = v + static_cast<int64_t>(b) * d.seq * d.kv_row + g * d.head_dim;
  const int64_t row_stat = (static_cast<int64_t>(b) * d.heads + h) * d.seq + t;
  Acc* my_q = q_rows + warp * d.head_dim;
  Acc* my_do = do_rows + warp * d.head_dim;
  Acc row_delta = 0, row_lse = 0;
  if (active) {
    const int64_t off = q_off + t * d.q_row;
    load_row(my_q, q + off, d.head_dim, scale, lane);
    load_row(my_do, dout + off, d.head_dim, Acc(1), lane);
    Acc part = 0;
    for (int i = lane; i < d.head_dim; i += kWarp)
      part += to_acc<Acc>(dout[off + i]) * to_acc<Acc>(out[off + i]);
    row_delta = warp_sum(part);
    row_lse = lse[row_stat];
  }

  Acc acc[kRegs] = {};
  const int last = min(row0 + kWarps, d.seq) - 1;
  for (int key0 = 0; key0 <= last; key0 += kTile) {
    __syncthreads();
    load_tile(k_tile, k_head, d.kv_row, key0, d.seq, d.head_dim);
    load_tile(v_tile, v_head, d.kv_row, key0, d.seq, d.head_dim);
    __syncthreads();
    const int n = active ? min(kTile, t - key0 + 1) : 0;
    if (n <= 0) continue;
    Acc ds = 0;
    if (lane < n) {
      Acc p = exp(dot(my_q, k_tile + lane * ld, d.head_dim) - row_lse);
      Acc dp = dot(my_do, v_tile + lane * ld, d.head_dim);
      ds = p * (dp - row_delta);
    }
    accumulate_rows(acc, ds, k_tile, 0, n, d.head_dim, lane);
  }
  if (!active) return;
  store_row(dq + q_off + t * d.q_row, acc, scale, d.head_dim, lane);
  if (lane == 0) delta[row_stat] = row_delta;
}

// Backward, pass 2: dk and dv. Grid (ceil(T / kWarps), Hkv, B); warp w owns key
// row j = blockIdx.x * kWarps + w of kv head g and walks the query tiles t >= j of
// every query head of the group: dv_j = sum P_tj dout_t, dk_j = scale sum dS_tj q_t.
template <class T, class Acc>
__global__ void attention_backward_dkdv_kernel(const T* dout, const T* q, const T* k, const T* v,
                                               const Acc* lse, const Acc* delta, T* dk, T* dv,
                                               Dims d, Acc scale) {
  extern __shared__ unsigned char smem_raw[];
  const int ld = tile_ld(d.head_dim);
  Acc* q_tile = reinterpret_cast<Acc*>(smem_raw);  // (kTile, ld)
  Acc* do_tile = q_tile + kTile * ld;              // (kTile, ld)
  Acc* k_rows = do_tile + kTile * ld;              // (kWarps, hd), pre-scaled
  Acc* v_rows = k_rows + kWarps * d.head_dim;      // (kWarps, hd)
  Acc* lse_tile = v_rows + kWarps * d.head_dim;    // (kTile)
  Acc* delta_tile = lse_tile + kTile;              // (kTile)
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int b = blockIdx.z, g = blockIdx.y, group = d.heads / d.kv_heads;
  const int row0 = blockIdx.x * kWarps, j = row0 + warp;
  const bool active = j < d.seq;
  const int64_t kv_off = static_cast<int64_t>(b) * d.seq * d.kv_row + g * d.head_dim;
  Acc* my_k = k_rows + warp * d.head_dim;
  Acc* my_v = v_rows + warp * d.head_dim;
  if (active) {
    load_row(my_k, k + kv_off + j * d.kv_row, d.head_dim, scale, lane);
    load_row(my_v, v + kv_off + j * d.kv_row, d.head_dim, Acc(1), lane);
  }

  Acc dk_acc[kRegs] = {}, dv_acc[kRegs] = {};
  for (int h = g * group; h < (g + 1) * group; ++h) {
    const int64_t q_off = static_cast<int64_t>(b) * d.seq * d.q_row + h * d.head_dim;
    const int64_t stat_off = (static_cast<int64_t>(b) * d.heads + h) * d.seq;
    for (int q0 = row0 / kTile * kTile; q0 < d.seq; q0 += kTile) {  // tiles that reach row0
      __syncthreads();
      load_tile(q_tile, q + q_off, d.q_row, q0, d.seq, d.head_dim);
      load_tile(do_tile, dout + q_off, d.q_row, q0, d.seq, d.head_dim);
      if (threadIdx.x < kTile) {
        int t = q0 + threadIdx.x;
        lse_tile[threadIdx.x] = t < d.seq ? lse[stat_off + t] : Acc(0);
        delta_tile[threadIdx.x] = t < d.seq ? delta[stat_off + t] : Acc(0);
      }
      __syncthreads();
      // Lanes [first, end) hold queries t in [j, T) of this tile.
      const int first = max(0, j - q0), end = active ? min(kTile, d.seq - q0) : 0;
      if (first >= end) continue;
      Acc p = 0, ds = 0;
      if (lane >= first && lane < end) {
        p = exp(dot(my_k, q_tile + lane * ld, d.head_dim) - lse_tile[lane]);
        Acc dp = dot(my_v, do_tile + lane * ld, d.head_dim);
        ds = p * (dp - delta_tile[lane]);
      }
      accumulate_rows(dv_acc, p, do_tile, first, end, d.head_dim, lane);
      accumulate_rows(dk_acc, ds, q_tile, first, end, d.head_dim, lane);
    }
  }
  if (!active) return;
  store_row(dk + kv_off + j * d.kv_row, dk_acc, scale, d.head_dim, lane);
  store_row(dv + kv_off + j * d.kv_row, dv_acc, Acc(1), d.head_dim, lane);
}

Dims make_dims(const Tensor& q, const Tensor& k) {
  int64_t B = q.size(0), T = q.size(1), H = q.size(2), Hkv = k.size(2), hd = q.size(3);
  FG_CHECK(hd <= kMaxHeadDim, "attention: head_dim ", hd, " of q ", q.shape_str(),
           " is more than the CUDA kernel's ", kMaxHeadDim);
  FG_CHECK(B <= 65535 && H <= 65535 && T <= (int64_t{1} << 30), "attention: q ", q.shape_str(),
           " is too large for the CUDA grid (B and H at most 65535)");
  return {static_cast<int>(T),
          static_cast<int>(H),
          static_cast<int>(Hkv),
          static_cast<int>(hd),
          H * hd,
          Hkv * hd};
}

// Allows `bytes` of dynamic shared memory for `kernel` (above 48 KiB needs opting in).
template <class Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  FG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
}

template <class T>
void launch_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                    const Tensor& lse) {
  using Acc = typename AccOf<T>::type;
  Dims d = make_dims(q, k);
  int64_t B = q.size(0);
  size_t smem = (2 * kTile * tile_ld(d.head_dim) + kWarps * d.head_dim) * sizeof(Acc);
  auto kernel = attention_forward_kernel<T, Acc>;
  set_smem(kernel, smem);
  dim3 grid(cuda::grid_for(d.seq, kWarps), d.heads, static_cast<unsigned>(B));
  kernel<<<grid, kBlock, smem, cuda::stream()>>>(
      q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<Acc>(), d,
      static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(d.head_dim))));
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void launch_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& out, const Tensor& lse, const AttentionGrads& grads) {
  using Acc = typename AccOf<T>::type;
  Dims d = make_dims(q, k);
  int64_t B = q.size(0);
  Acc scale = static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(d.head_dim)));
  Tensor delta = Tensor::empty(lse.shape(), lse.dtype(), lse.device());  // (B, H, T) rowsum(dO*O)
  size_t tiles = 2 * kTile * tile_ld(d.head_dim) * sizeof(Acc);
  size_t rows = 2 * kWarps * d.head_dim * sizeof(Acc);

  auto dq_kernel = attention_backward_dq_kernel<T, Acc>;
  set_smem(dq_kernel, tiles + rows);
  dim3 dq_grid(cuda::grid_for(d.seq, kWarps), d.heads, static_cast<unsigned>(B));
  dq_kernel<<<dq_grid, kBlock, tiles + rows, cuda::stream()>>>(
      dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<Acc>(),
      grads.dq.data<T>(), delta.data<Acc>(), d, scale);
  FG_CUDA_CHECK(cudaGetLastError());

  auto dkdv_kernel = attention_backward_dkdv_kernel<T, Acc>;
  size_t smem = tiles + rows + 2 * kTile * sizeof(Acc);
  set_smem(dkdv_kernel, smem);
  dim3 kv_grid(cuda::grid_for(d.seq, kWarps), d.kv_heads, static_cast<unsigned>(B));
  dkdv_kernel<<<kv_grid, kBlock, smem, cuda::stream()>>>(
      dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), lse.data<Acc>(), delta.data<Acc>(),
      grads.dk.data<T>(), grads.dv.data<T>(), d, scale);
  FG_CUDA_CHECK(cudaGetLastError());
}

template <class F>
void dispatch_attention(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32:
      return f.template operator()<float>();
    case DType::F64:
      return f.template operator()<double>();
    case DType::BF16:
      return f.template operator()<bf16>();
    default:
      FG_THROW(op, ": dtype ", dtype_name(dtype), " is not supported");
  }
}

}  // namespace

void attention_forward_cuda_simple(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& out, const Tensor& lse) {
  if (q.numel() == 0) return;
  dispatch_attention("attention", q.dtype(),
                     [&]<class T>() { launch_forward<T>(q, k, v, out, lse); });
}

void attention_backward_cuda_simple(const Tensor& dout, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& out, const Tensor& lse,
                                    const AttentionGrads& grads) {
  if (q.numel() == 0) {
    grads.dk.zero_();
    grads.dv.zero_();
    return;
  }
  dispatch_attention("attention_backward", q.dtype(),
                     [&]<class T>() { launch_backward<T>(dout, q, k, v, out, lse, grads); });
}

void attention_forward_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse) {
  if (flash_attention_supported(q) && flash_attention_aligned({&q, &k, &v, &out}))
    return flash_attention_forward_cuda(q, k, v, out, lse);
  attention_forward_cuda_simple(q, k, v, out, lse);
}

void attention_backward_cuda(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse, const AttentionGrads& grads) {
  if (flash_attention_supported(q) &&
      flash_attention_aligned({&dout, &q, &k, &v, &out, &grads.dq, &grads.dk, &grads.dv}))
    return flash_attention_backward_cuda(dout, q, k, v, out, lse, grads);
  attention_backward_cuda_simple(dout, q, k, v, out, lse, grads);
}

}  // namespace fg::ops::detail
