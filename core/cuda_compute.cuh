// Device-side conversions shared by the kernels: every dtype is loaded into its
// compute type (fp32 for bf16 and f32, f64 for f64) and stored back rounded.
#pragma once

#include <cuda_bf16.h>

#include <type_traits>

#include "core/dtype.h"

namespace fg {

__device__ __forceinline__ float to_compute(bf16 v) { return bf16_to_float(v); }
__device__ __forceinline__ float to_compute(float v) { return v; }
__device__ __forceinline__ double to_compute(double v) { return v; }

// The type arithmetic on T happens in.
template <class T>
using compute_t = decltype(to_compute(T{}));

template <class T, class C>
__device__ __forceinline__ T from_compute(C v) {
  if constexpr (std::is_same_v<T, bf16>) {  // one cvt.rn instruction: round to nearest even
    return bf16{__bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(v)))};
  } else {
    return static_cast<T>(v);
  }
}

// kVec consecutive elements moved as one access: 16 bytes when kVec is kPackOf<T>.
// Every kernel that streams rows in 16-byte packs uses this one type.
template <class T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};
template <class T>
constexpr int kPackOf = static_cast<int>(16 / sizeof(T));

template <int kVec, class T>
__device__ __forceinline__ Pack<T, kVec> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, kVec>*>(p);
}
template <int kVec, class T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, kVec>& v) {
  *reinterpret_cast<Pack<T, kVec>*>(p) = v;
}

// 2^x and 1/x on the special-function unit, for fp32 kernels that are as much issue- as
// bandwidth-bound: ex2.approx.ftz (2 ulp, as exp2f, at a fraction of its instructions;
// 2^-inf = 0, results below 2^-126 flush to 0) and rcp.approx.ftz (1 ulp).
constexpr float kLog2e = 1.4426950408889634f;  // e^x = 2^(x log2 e)
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float rcp_approx(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace fg
