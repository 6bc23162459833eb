// Elementwise add of two tensors of the same shape, dtype and device.
// Its backward is the identity, so there is no add_backward.
#pragma once

#include "core/tensor.h"

namespace fg::ops {

Tensor add_forward(const Tensor& a, const Tensor& b);
// dst += src (gradient accumulation); dst must be contiguous.
void add_inplace(const Tensor& dst, const Tensor& src);

namespace detail {
void add_cpu(const Tensor& a, const Tensor& b, const Tensor& out);
void add_cuda(const Tensor& a, const Tensor& b, const Tensor& out);
}  // namespace detail

}  // namespace fg::ops
