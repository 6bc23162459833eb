// RoPE on the GPU: one launch moves up to three segments of heads (q and k rotated,
// v copied) between packed-head layouts, so the fused layer splits qkv rows into
// q/k/v, and packs dq/dk/dv back into dqkv, without a separate copy. Angles in
// fp32 (f64 for f64) from the same double-precision inverse frequencies as the CPU.
#include <cmath>
#include <type_traits>

#include "core/cuda_utils.h"
#include "ops/rope/rope.h"

namespace fg::ops::detail {
namespace {

constexpr int kBlock = 256;

template <class T>
struct AngleOf {
  using type = float;
};
template <>
struct AngleOf<double> {
  using type = double;
};
template <class T>
using angle_t = typename AngleOf<T>::type;

__device__ __forceinline__ float to_angle_type(float v) {
  return v;
}
__device__ __forceinline__ double to_angle_type(double v) {
  return v;
}
__device__ __forceinline__ float to_angle_type(bf16 v) {
  return bf16_to_float(v);
}
template <class T, class A>
__device__ __forceinline__ T from_angle_type(A v) {
  if constexpr (std::is_same_v<T, bf16>) {
    return float_to_bf16(v);
  } else {
    return static_cast<T>(v);
  }
}

__device__ __forceinline__ void sincos_of(float a, float* s, float* c) {
  sincosf(a, s, c);
}
__device__ __forceinline__ void sincos_of(double a, double* s, double* c) {
  sincos(a, s, c);
}

// One segment: `heads` packed heads of hd elements per token, at in + b*in_sb + t*in_st.
template <class T>
struct SegmentArgs {
  const T* in;
  T* out;
  int64_t in_sb, in_st, out_sb, out_st;
  int64_t heads;
  bool rotate;
};

template <class T>
struct RopeArgs {
  SegmentArgs<T> seg[kMaxRopeSegments];
  int num_segments;
  int64_t heads;  // over all segments
  int64_t batch, seq, hd, half;
  const int32_t* positions;  // (T) or (B, T)
  bool per_batch;
  bool inverse;
  double log2_theta;
};

// One thread per (token, head, slot). Slot i < half handles the pair (i, i + half),
// rotated or copied; slot i >= half copies the pass-through dim i + half (>= rotary_dim).
template <class T>
__global__ void rope_kernel(const RopeArgs<T> a, int64_t total) {
  using A = angle_t<T>;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const int64_t slots = a.hd - a.half;
  const int64_t slot = idx % slots, rest = idx / slots;
  int64_t head = rest % a.heads;
  const int64_t token = rest / a.heads, b = token / a.seq, t = token % a.seq;
  SegmentArgs<T> seg = a.seg[0];
#pragma unroll
  for (int s = 1; s < kMaxRopeSegments; ++s) {  // static indices keep the params off the stack
    if (s < a.num_segments && head >= seg.heads) {
      head -= seg.heads;
      seg = a.seg[s];
    }
  }
  const T* in = seg.in + b * seg.in_sb + t * seg.in_st + head * a.hd;
  T* out = seg.out + b * seg.out_sb + t * seg.out_st + head * a.hd;
  if (slot >= a.half) {
    out[slot + a.half] = in[slot + a.half];
    return;
  }
  if (!seg.rotate) {
    out[slot] = in[slot];
    out[slot + a.half] = in[slot + a.half];
    return;
  }
  const A p = static_cast<A>(a.positions[a.per_batch ? token : t]);
  const A angle = p * static_cast<A>(rope_inv_freq(slot, 2 * a.half, a.log2_theta));
  A sn, cs;
  sincos_of(angle, &sn, &cs);
  if (a.inverse) sn = -sn;
  const A x1 = to_angle_type(in[slot]), x2 = to_angle_type(in[slot + a.half]);
  out[slot] = from_angle_type<T>(x1 * cs - x2 * sn);
  out[slot + a.half] = from_angle_type<T>(x2 * cs + x1 * sn);
}

template <class T>
void launch_rope(const std::vector<RopeSegment>& segments, const Tensor& positions,
                 int64_t rotary_dim, double theta, bool inverse) {
  const Tensor& first = segments[0].in;
  RopeArgs<T> a{};
  a.num_segments = static_cast<int>(segments.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    const RopeSegment& s = segments[i];
    a.seg[i] = {s.in.data<T>(),     s.out.data<T>(),    s.in.strides()[0], s.in.strides()[1],
                s.out.strides()[0], s.out.strides()[1], s.in.size(2),      s.rotate};
    a.heads += s.in.size(2);
  }
  a.batch = first.size(0);
  a.seq = first.size(1);
  a.hd = first.size(3);
  a.half = rotary_dim / 2;
  a.positions = positions.data<int32_t>();
  a.per_batch = positions.dim() == 2;
  a.inverse = inverse;
  a.log2_theta = std::log2(theta);
  const int64_t total = a.batch * a.seq * a.heads * (a.hd - a.half);
  if (total == 0) return;
  rope_kernel<T><<<cuda::grid_for(total, kBlock), kBlock, 0, cuda::stream()>>>(a, total);
  FG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void rope_segments_cuda(const std::vector<RopeSegment>& segments, const Tensor& positions,
                        int64_t rotary_dim, double theta, bool inverse) {
  switch (segments[0].in.dtype()) {
    case DType::F32:
      return launch_rope<float>(segments, positions, rotary_dim, theta, inverse);
    case DType::F64:
      return launch_rope<double>(segments, positions, rotary_dim, theta, inverse);
    case DType::BF16:
      return launch_rope<bf16>(segments, positions, rotary_dim, theta, inverse);
    default:
      FG_THROW("rope: dtype ", dtype_name(segments[0].in.dtype()), " is not supported on the GPU");
  }
}

}  // namespace fg::ops::detail
