// SwiGLU on the gate/up GEMM's output: gu = [g | u] along the last dim,
// out = silu(g) * u with silu(g) = g * sigmoid(g).
#pragma once

#include "core/tensor.h"

namespace fg::ops {

// gu (..., 2F) -> out (..., F)
Tensor swiglu_forward(const Tensor& gu);
// dout (..., F), gu (..., 2F) -> dgu (..., 2F)
Tensor swiglu_backward(const Tensor& dout, const Tensor& gu);

// The MLP's first half: gu = x @ w^T and out = swiglu(gu), x (..., D) and w (2F, D),
// gate rows first. On Hopper in bf16 one GEMM whose epilogue writes out beside gu
// (SwiGLU of the fp32 products, before gu is rounded); elsewhere linear_forward,
// then swiglu_forward.
struct GateUpSwiGLU {
  Tensor gu;   // (..., 2F), what swiglu_backward needs
  Tensor out;  // (..., F)
};
GateUpSwiGLU gate_up_swiglu(const Tensor& x, const Tensor& w);

// The MLP's second half, backward: dgu = swiglu_backward(dy @ w_down, gu) for
// y = swiglu(gu) @ w_down^T, dy (..., D), w_down (D, F), gu (..., 2F). On Hopper in bf16
// one GEMM whose epilogue applies SwiGLU's backward to the fp32 products (dout is
// never rounded, nor in memory); elsewhere matmul, then swiglu_backward.
Tensor swiglu_down_backward(const Tensor& dy, const Tensor& w_down, const Tensor& gu);

namespace detail {
// Checked, contiguous operands; outputs allocated by the caller.
void swiglu_forward_cpu(const Tensor& gu, const Tensor& out);
void swiglu_forward_cuda(const Tensor& gu, const Tensor& out);
void swiglu_backward_cpu(const Tensor& dout, const Tensor& gu, const Tensor& dgu);
void swiglu_backward_cuda(const Tensor& dout, const Tensor& gu, const Tensor& dgu);
// x (rows, D), w (2F, D), gu (rows, 2F), out (rows, F); returns false, touching
// nothing, where the fused GEMM does not run (not Hopper, not bf16, misaligned).
bool gate_up_swiglu_cuda(const Tensor& x, const Tensor& w, const Tensor& gu, const Tensor& out);
// Whether it runs for these x and w (given 16-byte-aligned outputs, as fresh tensors are).
bool gate_up_swiglu_cuda_takes(const Tensor& x, const Tensor& w);
// dy (rows, D), w (D, F), gu and dgu (rows, 2F); false, touching nothing, where the fused
// GEMM does not run (not Hopper, not bf16, misaligned).
bool swiglu_down_backward_cuda(const Tensor& dy, const Tensor& w, const Tensor& gu,
                               const Tensor& dgu);
}  // namespace detail

}  // namespace fg::ops
