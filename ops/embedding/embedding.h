// Embedding lookup: out[..., :] = weight[ids[...], :].
#pragma once

#include "core/tensor.h"

namespace fg::ops {

// weight (V, D) float; ids i32 of any shape, each in [0, V) -> out ids.shape + (D)
Tensor embedding_forward(const Tensor& weight, const Tensor& ids);
// grad_out ids.shape + (D) -> grad_weight (V, D), rows scatter-added. With
// grad_into ((V, D), contiguous, a dtype embedding_backward_accepts) the rows are
// added there (zeroed first unless `add`) and it is returned: a mixed-precision
// table's f32 master gradient takes the fp32 sums with no bf16 gradient and no
// conversion passes between.
Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t vocab_size,
                          const Tensor& grad_into = Tensor(), bool add = false);

// Whether grad_into of dtype `into` takes the sums of a grad_out of dtype `grad`
// on `device`: the same dtype, or f32 for bf16 on the GPU.
bool embedding_backward_accepts(DType grad, DType into, Device device);

namespace detail {
// Checked, contiguous operands; outputs allocated by the caller and written in
// full (backward zeroes grad_weight itself unless `add`). The CPU versions check the id range;
// on the GPU an out-of-range id reads as a NaN row and adds to no row.
void embedding_forward_cpu(const Tensor& weight, const Tensor& ids, const Tensor& out);
void embedding_forward_cuda(const Tensor& weight, const Tensor& ids, const Tensor& out);
void embedding_backward_cpu(const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight,
                            bool add = false);
void embedding_backward_cuda(const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight,
                             bool add = false);
}  // namespace detail

}  // namespace fg::ops
