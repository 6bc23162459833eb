// Global L2 norm over many gradient tensors, and clipping to a maximum norm.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace fg::ops {

// sqrt(sum over tensors of sum(g^2)), accumulated in f64
double global_grad_norm(const std::vector<Tensor>& grads);
// Multiplies every gradient by factor in place.
void scale_grads(const std::vector<Tensor>& grads, double factor);
// Scales the gradients so their global norm is at most max_norm; returns the
// norm before clipping (what training logs call grad_norm).
double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm);

namespace detail {
// Undefined entries (parameters that got no gradient) are skipped by all three
// functions above. These take defined, contiguous tensors of one device.
double sum_squares_cpu(const std::vector<Tensor>& grads);
double sum_squares_cuda(const std::vector<Tensor>& grads);  // one host sync
void scale_cpu(const std::vector<Tensor>& grads, double factor);
void scale_cuda(const std::vector<Tensor>& grads, double factor);
}  // namespace detail

}  // namespace fg::ops
