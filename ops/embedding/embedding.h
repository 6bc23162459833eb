// Embedding lookup: out[..., :] = weight[ids[...], :].
#pragma once

#include "core/tensor.h"

namespace fg::ops {

// weight (V, D) float; ids i32 of any shape, each in [0, V) -> out ids.shape + (D)
Tensor embedding_forward(const Tensor& weight, const Tensor& ids);
// grad_out ids.shape + (D) -> grad_weight (V, D): row v is the sum, in position
// order, of the rows of grad_out whose id is v (the same bits on every run).
// With `into` the sums land there and it is returned: a contiguous (V, D) tensor
// on grad_out's device, of a dtype embedding_backward_accepts (a parameter's f32
// master gradient under bf16 compute), added to what it holds when `add`.
Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t vocab_size,
                          const Tensor& into = Tensor(), bool add = false);

// Whether embedding_backward sums gradients of dtype `grad` into a buffer of dtype
// `into`: the same dtype, or a wider one (bf16 into f32, f32 into f64).
bool embedding_backward_accepts(DType grad, DType into);

namespace detail {
// Checked, contiguous operands; outputs allocated by the caller and written in
// full (backward zeroes the rows no id names unless `add`). The CPU versions
// check the id range; on the GPU an out-of-range id reads as a NaN row and adds
// to no row.
void embedding_forward_cpu(const Tensor& weight, const Tensor& ids, const Tensor& out);
void embedding_forward_cuda(const Tensor& weight, const Tensor& ids, const Tensor& out);
void embedding_backward_cpu(const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight,
                            bool add);
void embedding_backward_cuda(const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight,
                             bool add);
}  // namespace detail

}  // namespace fg::ops
