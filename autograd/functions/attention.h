#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// Causal GQA attention: q (B, T, H, hd), k and v (B, T, Hkv, hd) -> (B, T, H, hd).
// Keeps q, k, v, out and the log-sum-exp for backward.
Variable attention(const Variable& q, const Variable& k, const Variable& v);
}  // namespace fg::ag
