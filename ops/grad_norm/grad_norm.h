// Global L2 norm over many gradient tensors, and clipping to a maximum norm:
// as device tensors without host synchronization (what a step captured in a
// CUDA graph uses), and as host numbers (data parallel, logs, tests).
#pragma once

#include <vector>

#include "core/tensor.h"

namespace fg::ops {

// Undefined entries (parameters that got no gradient) are skipped by every
// function here. Gradients are f32, f64 or bf16; strided ones are read through
// contiguous copies, but the functions that write refuse them.

// () f32 (f64 when every gradient is f64) on the gradients' device (all on one):
// sqrt(sum of squares), accumulated in f64. No host sync: on the GPU one pass, a
// CUB reduction and a tiny finishing kernel. No gradients: 0 on the CPU.
Tensor grad_norm(const std::vector<Tensor>& grads);
// Multiplies every gradient in place by the one-element f32/f64 tensor factor,
// which lies on their device; on the GPU the kernel reads it from device memory
// (no host sync) and returns at once when it is exactly 1 (so does the CPU).
void scale_grads(const std::vector<Tensor>& grads, const Tensor& factor);

// The host-number forms; the gradients may lie on several devices.
// sqrt(sum over tensors of sum(g^2)), accumulated in f64 (one host sync per GPU)
double global_grad_norm(const std::vector<Tensor>& grads);
// Multiplies every gradient by factor in place.
void scale_grads(const std::vector<Tensor>& grads, double factor);
// Scales the gradients so their global norm is at most max_norm, by
// max_norm / (norm + 1e-6) where norm > max_norm; returns the norm before
// clipping (what training logs call grad_norm). A non-finite norm is returned
// with the gradients untouched.
double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm);

namespace detail {
// These take defined, contiguous tensors of one device.
double sum_squares_cpu(const std::vector<Tensor>& grads);
Tensor sum_squares_cuda(const std::vector<Tensor>& grads);  // () f64 on their device
// () `dtype` (f32 or f64): sqrt(sum_squares_cuda(grads)).
Tensor grad_norm_cuda(const std::vector<Tensor>& grads, DType dtype);
void scale_cpu(const std::vector<Tensor>& grads, double factor);
void scale_cuda(const std::vector<Tensor>& grads, const Tensor& factor);  // factor checked
}  // namespace detail

}  // namespace fg::ops
