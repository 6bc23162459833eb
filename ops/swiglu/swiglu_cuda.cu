// SwiGLU on the GPU: each thread takes a 16-byte pack of outputs of (rows, F)
// (one element when F or the buffers do not allow it), reading the gate g and
// up u from the two halves of gu's row; fp32 math for f32 and bf16. On Hopper the
// forward also runs inside the gate/up GEMM's epilogue (gate_up_swiglu_cuda).
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "core/cuda_compute.cuh"
#include "core/cuda_utils.h"
#include "ops/gemm/gemm_hopper.cuh"
#include "ops/gemm/gemm_hopper.h"
#include "ops/swiglu/swiglu.h"

namespace fg::ops::detail {
namespace {

constexpr int kBlock = 256;

// exp(100) = inf gives 0, not NaN. fp32: the hardware's exp2 and reciprocal (2 and
// 1 ulp; subnormal results flush to 0), a fraction of expf's and the division's
// instructions (these passes, and the GEMM epilogue, are as much issue- as
// bandwidth-bound).
__device__ __forceinline__ float sigmoid(float x) {
  return rcp_approx(1.f + exp2_approx(-x * kLog2e));
}
__device__ __forceinline__ double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

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

// dgu (rows, 2F) = [dout u s (1 + g (1 - s)) | dout g s] with s = sigmoid(g). Each
// thread takes kPacks adjacent packs of V and issues all their loads first. The launch
// uses one: on the H200 one pack per thread ran 77 us per GPT-2-small layer against 101
// for two (more blocks in flight beat more loads per thread). Written this way, the
// stores stay 16-byte STG.128; a plain one-pack rewrite compiled to 4- and 2-byte
// stores and ran 114 us (bench/RESULTS.md, session 11).
template <class T, int V, int kPacks>
__global__ void swiglu_backward_kernel(const T* dout, const T* gu, T* dgu, int64_t rows,
                                       int64_t f) {
  const int64_t fv = f / V;
  const int64_t first = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * kPacks;
  Pack<T, V> g[kPacks], u[kPacks], d[kPacks];
  int64_t gi[kPacks];
#pragma unroll
  for (int q = 0; q < kPacks; ++q) {
    const int64_t i = first + q;
    if (i >= rows * fv) break;
    const int64_t r = i / fv;
    gi[q] = r * 2 * f + (i - r * fv) * V;
    g[q] = *reinterpret_cast<const Pack<T, V>*>(gu + gi[q]);
    u[q] = *reinterpret_cast<const Pack<T, V>*>(gu + gi[q] + f);
    d[q] = *reinterpret_cast<const Pack<T, V>*>(dout + i * V);
  }
#pragma unroll
  for (int q = 0; q < kPacks; ++q) {
    if (first + q >= rows * fv) break;
    Pack<T, V> dg, du;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      auto gk = to_compute(g[q].v[k]), uk = to_compute(u[q].v[k]), dk = to_compute(d[q].v[k]);
      auto sk = sigmoid(gk);
      dg.v[k] = from_compute<T>(dk * uk * sk * (1 + gk * (1 - sk)));
      du.v[k] = from_compute<T>(dk * gk * sk);
    }
    *reinterpret_cast<Pack<T, V>*>(dgu + gi[q]) = dg;
    *reinterpret_cast<Pack<T, V>*>(dgu + gi[q] + f) = du;
  }
}

// The gate/up product's epilogue (gemm_hopper.cuh, B's gate and up halves paired): a tile's
// columns 0..127 are the gate of features n0/2 .. n0/2 + 127 and columns 128..255 the up of
// the same features, so a thread holds g and u of each of its features. The tile leaves as
// is into gu; its second output is out = silu(g) u, from the fp32 products (before gu is
// rounded), 128 columns staged and stored by TMA like the first.
struct SwiGLUStore {
  static constexpr int kSecondBoxes = 2;
  CUtensorMap g_map, u_map;  // gu's halves, (rows, F) each with row stride 2F
  CUtensorMap out_map;       // (rows, F)

  __device__ __forceinline__ void apply(int, int, float (&)[64]) const {}
  __device__ __forceinline__ void store(uint32_t box, int row0, int col) const {
    const int b = (col % hopper::kBlockN) / hopper::kStoreBox;  // 0, 1 gate; 2, 3 up
    hopper::tma_store_2d(b < 2 ? &g_map : &u_map, box, feature_of(col) - 128 * (b / 2), row0);
  }
  __device__ __forceinline__ void apply_second(int, int, float (&v)[64]) const {
#pragma unroll
    for (int j = 0; j < 32; ++j) v[j] = v[j] * sigmoid(v[j]) * v[j + 32];  // v[j + 32]: its up
  }
  __device__ __forceinline__ void store_second(uint32_t box, int row0, int col) const {
    hopper::tma_store_2d(&out_map, box, feature_of(col), row0);
  }
  // The feature of a tile's gate column (n0/2 + c for column c of tile n0).
  __device__ __forceinline__ static int feature_of(int col) {
    return (col - col % hopper::kBlockN) / 2 + col % hopper::kBlockN;
  }
};

// The epilogue of dout = dy @ w_down (gemm_hopper.cuh, B (K, N) = w_down (D, F)), staged: the
// tile is dout for features n0.., never rounded or stored. Per 64-column quarter, the gate's
// 64 x 64 box of gu and the up's land in a slot of the output buffer by TMA, each thread turns
// its pairs into dg and du in place (SwiGLU's backward as in swiglu_backward_kernel, on the
// fp32 dout), and the two boxes go out to dgu's halves.
struct SwiGLUBackwardStore {
  static constexpr bool kStagedQuarters = true;
  static constexpr int kBox = hopper::kStoreBox * 128;  // bytes of one 64 x 64 box
  CUtensorMap g_map, u_map;    // gu's halves, (rows, F) each with row stride 2F
  CUtensorMap dg_map, du_map;  // dgu's halves, the same way
  int f;

  // A quarter's gate box at slot, its up box next; a box wholly past F reads the last whole
  // one (its outputs are dropped).
  __device__ __forceinline__ void load_quarter(uint32_t slot, uint64_t* bar, int row0,
                                               int col) const {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    hopper::mbar_expect_tx(bar, 2 * kBox);
    const int c = min(col, (f - 1) / 64 * 64);
    hopper::tma_load_2d(slot, &g_map, bar, c, row0);
    hopper::tma_load_2d(slot + kBox, &u_map, bar, c, row0);
#endif
  }
  struct Staged {
    uint32_t g2, u2;  // a pair of gate and up values, bf16
  };
  __device__ __forceinline__ Staged load_staged(uint32_t g_addr, uint32_t u_addr) const {
    Staged v;
    asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v.g2) : "r"(g_addr));
    asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v.u2) : "r"(u_addr));
    return v;
  }
  __device__ __forceinline__ void apply_staged(uint32_t g_addr, uint32_t u_addr, Staged in,
                                               float& a0, float& a1) const {
    const uint32_t g2 = in.g2, u2 = in.u2;
    const __nv_bfloat162 dg = __floats2bfloat162_rn(grad(a0, g2 << 16, u2 << 16),
                                                    grad(a1, g2 & 0xffff0000u, u2 & 0xffff0000u));
    const __nv_bfloat162 du = __floats2bfloat162_rn(a0, a1);
    asm volatile("st.shared.b32 [%0], %1;" ::"r"(g_addr),
                 "r"(*reinterpret_cast<const uint32_t*>(&dg))
                 : "memory");
    asm volatile("st.shared.b32 [%0], %1;" ::"r"(u_addr),
                 "r"(*reinterpret_cast<const uint32_t*>(&du))
                 : "memory");
  }
  // d's gate gradient, d becoming its up gradient; g and u as bf16 bits in a float's top half.
  __device__ __forceinline__ static float grad(float& d, uint32_t g_bits, uint32_t u_bits) {
    const float g = __uint_as_float(g_bits), u = __uint_as_float(u_bits), s = sigmoid(g);
    const float dg = d * u * s * (1 + g * (1 - s));
    d *= g * s;
    return dg;
  }
  __device__ __forceinline__ void store_quarter(uint32_t slot, int row0, int col) const {
    hopper::tma_store_2d(&dg_map, slot, col, row0);
    hopper::tma_store_2d(&du_map, slot + kBox, col, row0);
  }
};

// 16-byte packs when every row start is aligned to one (F a multiple of the pack
// and the buffers aligned); single elements otherwise.
template <class T>
constexpr int kPack = sizeof(T) <= 4 ? static_cast<int>(16 / sizeof(T)) : 1;

bool packable(int64_t f, int pack, std::initializer_list<const Tensor*> ts) {
  if (pack == 1 || f % pack != 0) return false;
  for (const Tensor* t : ts)
    if (!t->starts_aligned(16)) return false;
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
    constexpr int kPacks = 1;
    swiglu_backward_kernel<T, V, kPacks>
        <<<cuda::grid_for(total / V, kBlock * kPacks), kBlock, 0, cuda::stream()>>>(
            dout.data<T>(), gu.data<T>(), dgu.data<T>(), total / f, f);
  };
  if (packable(f, kPack<T>, {&dout, &gu, &dgu}))
    launch.template operator()<kPack<T>>();
  else
    launch.template operator()<1>();
  FG_CUDA_CHECK(cudaGetLastError());
}

// The schedule of the SwiGLU products (the gate/up forward and the down projection's
// backward). At K <= kMulticastMaxK ping-pong, so one consumer's SwiGLU epilogue runs under the
// other's products. Past it (the seed's K = 4096) cooperative: its epilogue is exposed (~2 % of
// a 64-k-tile product), but its 128 x 256 tiles draw 0.0114 bytes of operands per FLOP from L2
// against ping-pong's 0.0195, and at the power limit that buys clock for the whole step
// (bench/RESULTS.md, session 28: seed step 48.18 -> 47.54 ms, cuBLASLt's products faster too;
// the QKV and LM-head epilogues, heavier, lost more than they gained there and stay ping-pong).
bool swiglu_cooperative(int64_t K) {
  return K > kMulticastMaxK;
}

}  // namespace

bool gate_up_swiglu_cuda_takes(const Tensor& x, const Tensor& w) {
  const int64_t rows = x.size(0), D = x.size(1), f = w.size(0) / 2;
  return x.dtype() == DType::BF16 && w.dtype() == DType::BF16 && rows > 0 &&
         rows < (int64_t{1} << 31) && 2 * f < (int64_t{1} << 31) && D % 8 == 0 && f % 8 == 0 &&
         x.starts_aligned(16) && w.starts_aligned(16) && gemm_hopper_available();
}

bool gate_up_swiglu_cuda(const Tensor& x, const Tensor& w, const Tensor& gu, const Tensor& out) {
  const int64_t rows = x.size(0), D = x.size(1), f = out.size(-1);
  if (!gate_up_swiglu_cuda_takes(x, w) || !gu.starts_aligned(16) || !out.starts_aligned(16))
    return false;
  const auto half_map = [&](const bf16* base) {
    return hopper::kmajor_map(base, rows, f, 2 * f, hopper::kStoreBox);
  };
  const SwiGLUStore epi{half_map(gu.data<bf16>()), half_map(gu.data<bf16>() + f),
                        hopper::kmajor_map(out.data<bf16>(), rows, f, f, hopper::kStoreBox)};
  if (swiglu_cooperative(D))
    hopper::launch_gemm_tn<GemmSchedule::kCooperative>(
        x.data<bf16>(), D, w.data<bf16>(), D, static_cast<int>(rows), static_cast<int>(2 * f),
        static_cast<int>(D), epi, cuda::stream(), /*paired_halves=*/true);
  else
    hopper::launch_gemm_tn_pingpong(x.data<bf16>(), D, w.data<bf16>(), D, static_cast<int>(rows),
                                    static_cast<int>(2 * f), static_cast<int>(D), epi,
                                    cuda::stream(), /*paired_halves=*/true);
  return true;
}

bool swiglu_down_backward_cuda(const Tensor& dy, const Tensor& w, const Tensor& gu,
                               const Tensor& dgu) {
  const int64_t rows = dy.size(0), D = dy.size(1), f = w.size(1);
  const bool takes = dy.dtype() == DType::BF16 && w.dtype() == DType::BF16 &&
                     gu.dtype() == DType::BF16 && dgu.dtype() == DType::BF16 && rows > 0 &&
                     rows < (int64_t{1} << 31) && 2 * f < (int64_t{1} << 31) && D > 0 &&
                     D % 8 == 0 && f % 8 == 0 && dy.starts_aligned(16) && w.starts_aligned(16) &&
                     gu.starts_aligned(16) && dgu.starts_aligned(16) && gemm_hopper_available();
  if (!takes) return false;
  const auto half_map = [&](const bf16* base) {
    return hopper::kmajor_map(base, rows, f, 2 * f, hopper::kStoreBox);
  };
  const SwiGLUBackwardStore epi{half_map(gu.data<bf16>()), half_map(gu.data<bf16>() + f),
                                half_map(dgu.data<bf16>()), half_map(dgu.data<bf16>() + f),
                                static_cast<int>(f)};
  const auto run = [&]<GemmSchedule kSchedule>() {
    hopper::launch_gemm_tn<kSchedule, BLayout::kKN>(dy.data<bf16>(), D, w.data<bf16>(), f,
                                                    static_cast<int>(rows), static_cast<int>(f),
                                                    static_cast<int>(D), epi, cuda::stream());
  };
  if (swiglu_cooperative(D))
    run.template operator()<GemmSchedule::kCooperative>();
  else
    run.template operator()<GemmSchedule::kPingPong>();  // a kKN B: one-CTA ping-pong
  return true;
}

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
