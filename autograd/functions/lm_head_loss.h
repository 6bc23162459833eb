#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// mean cross_entropy(y @ weight^T, targets) without materializing the logits:
// y (N, D), weight (V, D), targets i32 (N), -1 ignored. The gradients are
// computed during forward (they need the same logits) and kept until backward.
Variable lm_head_loss(const Variable& y, const Variable& weight, const Tensor& targets,
                      int64_t chunk_rows = 0);
}  // namespace fg::ag
