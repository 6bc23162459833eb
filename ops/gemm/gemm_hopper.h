// The Hopper GEMM of gemm_hopper.cuh behind Tensors, with its plain epilogue (bf16 out,
// optional bias), for tests, benchmarks and host code that cannot include device code.
#pragma once

#include "core/tensor.h"

namespace fg::ops::detail {

// Whether the current device runs it: a Hopper GPU and a build for sm_90a.
bool gemm_hopper_available();

// c = a @ b^T (+ bias), fp32 sums rounded to bf16 once. a (M, K), b (N, K), c (M, N), bias
// (N) or undefined: bf16 on the current CUDA device, rows contiguous; a and b 16-byte
// aligned with row strides (and K) multiples of 8 elements.
void gemm_hopper_bf16(const Tensor& a, const Tensor& b, const Tensor& c,
                      const Tensor& bias = Tensor());

}  // namespace fg::ops::detail
