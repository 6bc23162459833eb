#pragma once
#include "autograd/variable.h"

namespace fg::ag {
// gu (..., 2F) = [gate | up] -> silu(gate) * up (..., F)
Variable swiglu(const Variable& gu);
// The MLP, swiglu(x @ w_gate_up^T) @ w_down^T with x (..., D), w_gate_up (2F, D) and w_down
// (D, F), as two nodes: the gate/up product (one fused forward with SwiGLU where it runs:
// Hopper, bf16) and "swiglu_down", whose backward gives gu's gradient from one fused GEMM
// (ops::swiglu_down_backward) and w_down's as linear does. residual (x's shape) or
// undefined: added to the output by the down product, as ag::linear adds one. Without
// compute_output the down product is not run and the output is left unwritten (its node is
// all a recomputed region needs of its last product: checkpoint.h, recomputing()).
Variable swiglu_mlp(const Variable& x, const Variable& w_gate_up, const Variable& w_down,
                    const Variable& residual = Variable(), bool compute_output = true);
}  // namespace fg::ag
