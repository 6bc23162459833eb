// The one matrix multiply every op uses: C = alpha * op(A) @ op(B) + beta * C
// (+ bias broadcast over rows), or + beta * addend in place of beta * C when an
// addend is given, row-major 2-D operands whose last dimension is
// contiguous. CPU: plain loops in the operands' dtype. CUDA: cuBLASLt, bf16/f32
// in, fp32 accumulate, bias in the epilogue.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace fg::ops {

// a: (m, k), or (k, m) with trans_a; b: (k, n), or (n, k) with trans_b; c: (m, n);
// bias: (n) or undefined. All on one device; a and b of one dtype, c and bias of
// that dtype too, or c of a wider one where gemm_accepts says so (the fp32 sums
// written unrounded: weight gradients straight into f32 master gradients).
// addend: c's shape and dtype, or undefined; read in the product's epilogue (a residual
// added to a projection's output without a pass of its own), never written.
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
          double alpha = 1.0, double beta = 0.0, const Tensor& bias = Tensor(),
          const Tensor& addend = Tensor());

// Products nothing reads until later: backward's weight gradients, read only by the
// optimizer. While a GemmBatch is open on this thread, gemm_batchable() checks the
// product and queues it; flush() runs the queue, all products of one problem (shapes,
// strides, dtypes, scalars) together: on CUDA as one cuBLASLt pointer-array batched
// call, which fills the GPU where each alone leaves SMs idle (the 12 layers' weight
// gradients of GPT-2-small; bench/RESULTS.md), on the CPU one after another. A CUDA
// product that alone covers the GPU several times over runs at once. A product into a
// c that a queued one writes flushes the queue first, so order is kept. What
// after_gemm_batch() was given (the engine's grad-ready hooks, which must not see a
// buffer before its product has written it) runs after the products it reads. The
// operands live until the flush: memory for speed.
class GemmBatch {
 public:
  explicit GemmBatch(bool open = true);  // open = false: a no-op scope
  ~GemmBatch();  // unflushed products are dropped (an exception left backward)
  GemmBatch(const GemmBatch&) = delete;
  GemmBatch& operator=(const GemmBatch&) = delete;
  void flush();
  struct Queue;

 private:
  std::unique_ptr<Queue> queue_;
  Queue* previous_ = nullptr;
};
// gemm(a, trans_a, b, trans_b, c, alpha, beta), queued when a GemmBatch is open.
void gemm_batchable(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                    double alpha = 1.0, double beta = 0.0);
// Runs fn, which reads `reads`, now, or at the open batch's flush right after the last
// queued product that writes `reads`.
void after_gemm_batch(const Tensor& reads, std::function<void()> fn);
// Before t is read or written outside gemm_batchable: runs the open batch's queue if a
// queued product reads or writes t's memory.
void gemm_batch_sync(const Tensor& t);

// Off by default: each problem (shapes, dtypes, alignments) runs the algorithm
// cuBLASLt's heuristic ranks first, the same in every process, so a resumed run
// repeats the interrupted one bit for bit. On (or FG_GEMM_TUNE=1 in the environment),
// the first call of each new problem outside a CUDA graph capture times the
// heuristic's first 8 algorithms on its own operands (c only read) and keeps the
// fastest, as PyTorch's TunableOp does. A product timed alone is not one timed inside a
// step (a GPT-2-small step got faster, a 1B-parameter one slower: docs/cli.md), and the
// pick follows timing noise, so another process may round differently. Plans made
// before stay as made.
void set_gemm_tuning(bool on);

// Whether gemm takes operands of dtype `ab` with c of dtype `c` on `device`: the
// same dtype everywhere; bf16 operands with an f32 c; on the CPU any c wider than
// the operands.
bool gemm_accepts(DType ab, DType c, Device device);

// Shorthand: returns op(A) @ op(B) in a new tensor.
Tensor matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b);

// Scratch memory gemm keeps on `device` for the life of the process (cuBLASLt's
// workspace on CUDA; none on the CPU), for memory summaries.
size_t gemm_workspace_bytes(Device device);

namespace detail {
// gemm's argument checks (a one-line error naming the operand and what is wrong).
void check_gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                const Tensor& bias, const Tensor& addend);
void gemm_cpu(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
              double alpha, double beta, const Tensor& bias);
// addend: c's shape and dtype, or undefined (then beta scales c itself).
void gemm_cuda(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
               double alpha, double beta, const Tensor& bias, const Tensor& addend);
// c[i] = alpha op(a[i]) op(b[i]) + beta c[i] for products of one problem (checked by
// gemm_batchable; same shapes, strides and dtypes), batched in cuBLASLt calls.
void gemm_cuda_batched(const std::vector<Tensor>& a, bool trans_a, const std::vector<Tensor>& b,
                       bool trans_b, const std::vector<Tensor>& c, double alpha, double beta);
size_t gemm_cuda_workspace_bytes();
void set_gemm_tuning_cuda(bool on);
}  // namespace detail

}  // namespace fg::ops
