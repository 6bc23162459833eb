// Global L2 norm over many gradient tensors, and clipping to a maximum norm:
// as device tensors without host synchronization (what a step captured in a
// CUDA graph uses), and as host numbers (data parallel, logs, tests).
#pragma once

#include <memory>
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

// grad_norm(grads) computed while backward still runs. Between start() and finish(),
// ready(i) says that gradient i holds its final value in the compute stream's order;
// on the GPU its sum of squares is queued at once on cuda::side_stream(), at the least
// priority, where it takes the SMs that backward's kernels leave free instead of a
// pass of its own after them. finish() counts the gradients not marked ready, joins
// the side stream into the compute stream and returns what grad_norm(grads) returns,
// bit for bit: the same partial sums of the same chunks, added in the same order.
// On the CPU ready() does nothing. Nothing is read back, so a CUDA graph may capture
// a pass. The gradients are held (their buffers, written in place by backward) and
// must be contiguous, f32, f64 or bf16, on one device; undefined ones are skipped.
class GradNormInBackward {
 public:
  explicit GradNormInBackward(std::vector<Tensor> grads);
  ~GradNormInBackward();
  GradNormInBackward(const GradNormInBackward&) = delete;
  GradNormInBackward& operator=(const GradNormInBackward&) = delete;

  void start();
  void ready(size_t i);  // ignored outside start()..finish() and for one already counted
  Tensor finish();       // () like grad_norm's; ends the pass

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

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
// GradNormInBackward's GPU state and steps (grad_norm_cuda.cu): count(begin, end) writes
// the partials of gradients [begin, end) in one launch, on the side stream or the compute
// stream.
struct SideNorm;
std::shared_ptr<SideNorm> side_norm_cuda(const std::vector<Tensor>& grads);
void side_norm_count_cuda(SideNorm& s, size_t begin, size_t end, bool on_side);
Tensor side_norm_finish_cuda(SideNorm& s, DType dtype);
void scale_cuda(const std::vector<Tensor>& grads, const Tensor& factor);  // factor checked
}  // namespace detail

}  // namespace fg::ops
