// Rotary position embedding, rotate-half form, on the first rotary_dim dims of
// each head. For i in [0, rotary_dim/2): angle = pos * theta^(-2i/rotary_dim);
// out[i] = x[i] cos - x[i+r/2] sin, out[i+r/2] = x[i+r/2] cos + x[i] sin; the
// dims >= rotary_dim pass through. Backward is the inverse rotation.
#pragma once

#include "core/tensor.h"

namespace fg::ops {

// x (B, T, nh, hd); positions i32 (T) shared by the batch, or (B, T); rotary_dim even, <= hd
Tensor rope_forward(const Tensor& x, const Tensor& positions, int64_t rotary_dim, double theta);
Tensor rope_backward(const Tensor& dy, const Tensor& positions, int64_t rotary_dim, double theta);

// Throws unless x is (B, T, nh, hd), positions (T) or (B, T) i32, rotary_dim even and <= hd.
void check_rope_args(const char* op, const Tensor& x, const Tensor& positions, int64_t rotary_dim);

}  // namespace fg::ops
