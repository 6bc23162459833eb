// Rotary position embedding, rotate-half form, on the first rotary_dim dims of
// each head. For i in [0, rotary_dim/2): angle = pos * theta^(-2i/rotary_dim);
// out[i] = x[i] cos - x[i+r/2] sin, out[i+r/2] = x[i+r/2] cos + x[i] sin; the
// dims >= rotary_dim pass through. Backward is the inverse rotation.
#pragma once

#include <cmath>
#include <vector>

#include "core/tensor.h"

namespace fg::ops {

// x (B, T, nh, hd); positions i32 (T) shared by the batch, or (B, T); rotary_dim even, <= hd
Tensor rope_forward(const Tensor& x, const Tensor& positions, int64_t rotary_dim, double theta);
Tensor rope_backward(const Tensor& dy, const Tensor& positions, int64_t rotary_dim, double theta);

// Throws unless x is (B, T, nh, hd), positions (T) or (B, T) i32, rotary_dim even and <= hd.
void check_rope_args(const char* op, const Tensor& x, const Tensor& positions, int64_t rotary_dim);

// The (cos, sin) table that GPU kernels rotating inside a bigger kernel read (the fused
// projection's epilogue, attention's backward into qkv): detail::rope_table_cuda of
// positions on a GPU; undefined for positions on the CPU, which rotates from the positions.
// The ops that read it make one when given none; a model's forward makes it once and
// passes it to every layer (each made its own, twice per layer: 24 launches per GPT-2-small
// step).
Tensor rope_table(const Tensor& positions, int64_t rotary_dim, double theta);

namespace detail {
// A run of heads that rope moves from `in` to `out`, rotated or copied. Both are
// (B, T, nh, hd) with packed heads (strides (sb, st, hd, 1), any sb and st), so q, k
// and v can be column blocks of one qkv row: one launch splits qkv into rotated q,
// rotated k and copied v, and the backward packs them back.
struct RopeSegment {
  Tensor in;
  Tensor out;
  bool rotate = true;
};
constexpr int kMaxRopeSegments = 3;

// What the fused layer's backward folds into the same pass (optional): column_sums
// (the segments' heads * hd columns, in segment order), of the segments' dtype, gets
// the sum over all B*T rows of the output (the bias gradient).
struct RopeExtras {
  Tensor column_sums;
};

// Rotates by +angle, or by -angle when `inverse` (the backward). The segments share
// B, T and hd; positions are contiguous i32 (T) or (B, T) on their device.
void rope_segments(const std::vector<RopeSegment>& segments, const Tensor& positions,
                   int64_t rotary_dim, double theta, bool inverse,
                   const RopeExtras& extras = RopeExtras());
void rope_segments_cpu(const std::vector<RopeSegment>& segments, const Tensor& positions,
                       int64_t rotary_dim, double theta, bool inverse, const RopeExtras& extras);
void rope_segments_cuda(const std::vector<RopeSegment>& segments, const Tensor& positions,
                        int64_t rotary_dim, double theta, bool inverse, const RopeExtras& extras);

// The (cos, sin) of every (position, frequency) as float pairs: (positions.numel(),
// rotary_dim) f32, entry [p, 2 i] / [p, 2 i + 1] for positions.flat[p] * inv_freq(i),
// with rope_kernel's arithmetic (f32 angle, sincosf). Kernels that rotate inside a
// bigger one read it: the fused projection's epilogue and attention's backward.
Tensor rope_table_cuda(const Tensor& positions, int64_t rotary_dim, double theta);

// Throws unless positions is i32 (T) or (B, T) on `device`.
void check_positions(const char* op, const Tensor& positions, int64_t B, int64_t T, Device device);

// Throws unless `table` is undefined or what rope_table(positions, rotary_dim, ..) makes:
// (positions.numel(), rotary_dim) f32 on the positions' GPU. (Its values are the caller's
// word: a table of other positions or another theta rotates by those.)
void check_rope_table(const char* op, const Tensor& table, const Tensor& positions,
                      int64_t rotary_dim);

// theta^(-2i / rotary_dim), computed in double on both devices and then rounded to the
// angle type, so f32 angles on the CPU and the GPU agree bit for bit.
FG_HOST_DEVICE double rope_inv_freq(int64_t i, int64_t rotary_dim, double log2_theta) {
  return exp2(-2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim) * log2_theta);
}
}  // namespace detail

}  // namespace fg::ops
