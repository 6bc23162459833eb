// Embedding lookup: out[..., :] = weight[ids[...], :].
#pragma once

#include "core/tensor.h"

namespace fg::ops {

// weight (V, D) float; ids i32 of any shape, each in [0, V) -> out ids.shape + (D)
Tensor embedding_forward(const Tensor& weight, const Tensor& ids);
// grad_out ids.shape + (D) -> grad_weight (V, D), rows scatter-added
Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t vocab_size);

namespace detail {
// Checked, contiguous operands; outputs allocated by the caller and written in
// full (backward zeroes grad_weight itself). The CPU versions check the id range;
// on the GPU an out-of-range id reads as a NaN row and adds to no row.
void embedding_forward_cpu(const Tensor& weight, const Tensor& ids, const Tensor& out);
void embedding_forward_cuda(const Tensor& weight, const Tensor& ids, const Tensor& out);
void embedding_backward_cpu(const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight);
void embedding_backward_cuda(const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight);
}  // namespace detail

}  // namespace fg::ops
