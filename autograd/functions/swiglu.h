#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// gu (..., 2F) = [gate | up] -> silu(gate) * up (..., F)
Variable swiglu(const Variable& gu);
// The MLP's first half, swiglu(linear(x, w_gate_up)) with x (..., D) and w_gate_up
// (2F, D): the same two nodes, from one fused forward where it runs (Hopper, bf16).
Variable gate_up_swiglu(const Variable& x, const Variable& w_gate_up);
}  // namespace fg::ag
