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

}  // namespace fg
