// Embedding lookup: out[..., :] = weight[ids[...], :].
#pragma once

#include "core/tensor.h"

namespace fg::ops {

// weight (V, D) float; ids i32 of any shape, each in [0, V) -> out ids.shape + (D)
Tensor embedding_forward(const Tensor& weight, const Tensor& ids);
// grad_out ids.shape + (D) -> grad_weight (V, D), rows scatter-added
Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t vocab_size);

}  // namespace fg::ops
