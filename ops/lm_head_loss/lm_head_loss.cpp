#include "ops/lm_head_loss/lm_head_loss.h"

#include <algorithm>

#include "ops/add/add.h"
#include "ops/cross_entropy/cross_entropy.h"
#include "ops/gemm/gemm.h"

namespace fg::ops {

LMHeadLossOut lm_head_loss(const Tensor& y_in, const Tensor& weight_in, const Tensor& targets_in,
                           bool need_grads, int64_t chunk_rows) {
  const char* op = "lm_head_loss";
  check_defined(op, "y", y_in);
  check_defined(op, "weight", weight_in);
  check_dtype(op, "targets", targets_in, DType::I32);
  FG_CHECK(y_in.dim() == 2 && weight_in.dim() == 2 && y_in.size(1) == weight_in.size(1), op,
           ": y is ", y_in.shape_str(), " but weight is ", weight_in.shape_str());
  FG_CHECK(targets_in.dim() == 1 && targets_in.size(0) == y_in.size(0), op, ": y is ",
           y_in.shape_str(), " but targets is ", targets_in.shape_str());
  FG_CHECK(y_in.dtype() == weight_in.dtype(), op, ": y is ", dtype_name(y_in.dtype()),
           " but weight is ", dtype_name(weight_in.dtype()));
  check_same_device(op, "y", y_in, "weight", weight_in);
  check_same_device(op, "y", y_in, "targets", targets_in);
  const Tensor y = y_in.contiguous(), weight = weight_in.contiguous(),
               targets = targets_in.contiguous();
  const int64_t N = y.size(0), D = y.size(1), V = weight.size(0);
  if (chunk_rows <= 0) {
    const int64_t most = std::max<int64_t>(1, kLMHeadChunkElements / std::max<int64_t>(V, 1));
    const int64_t chunks = std::max<int64_t>({1, std::min<int64_t>(N, 2), (N + most - 1) / most});
    chunk_rows = std::max<int64_t>(1, (N + chunks - 1) / chunks);
  }

  // The vocabulary padded to whole 16-byte rows with zero rows of the weight, so that every
  // product runs on aligned rows (cuBLASLt's vectorized kernels need them: at the 65
  // characters of tinyshakespeare its three products ran at ~20 TFLOP/s, ~100 us of the baby
  // model's 3.8 ms step on an H200). The padded logits are exactly 0 and their gradient stays
  // 0 (cross-entropy sees only the first V columns), so the padding adds nothing to dy and
  // only zero rows to dW.
  const int64_t row_align = std::max<int64_t>(1, 16 / static_cast<int64_t>(dtype_size(y.dtype())));
  const int64_t Vp = (V + row_align - 1) / row_align * row_align;
  Tensor w = weight;
  if (Vp != V) {
    w = Tensor::zeros({Vp, D}, weight.dtype(), weight.device());
    w.slice(0, 0, V).copy_(weight);
  }

  // The mean is over every counted row: each chunk divides by the whole batch's
  // count, so its loss is its share of the mean. All of it stays on the device.
  const DType loss_dtype = y.dtype() == DType::F64 ? DType::F64 : DType::F32;
  LMHeadLossOut r;
  r.count = count_targets(targets);
  r.loss = Tensor::zeros({}, loss_dtype, y.device());
  Tensor one;  // () dloss of each chunk: the chunks' losses add up to the mean
  if (need_grads) {
    r.dy = Tensor::empty({N, D}, y.dtype(), y.device());
    // The first chunk's product writes it (beta 0), the others add to it: no zero pass.
    r.dweight = N > 0 ? Tensor::empty({Vp, D}, weight.dtype(), weight.device())
                      : Tensor::zeros({Vp, D}, weight.dtype(), weight.device());
    one = Tensor::ones({}, loss_dtype, y.device());
  }
#ifdef FG_CUDA
  const bool in_epilogue =
      V >= detail::kLossInEpilogueMinVocab && detail::lm_head_exp_applies(y, w);
#else
  const bool in_epilogue = false;
#endif
  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
    const int64_t r1 = std::min(N, r0 + chunk_rows);
    const Tensor y_c = y.slice(0, r0, r1), t_c = targets.slice(0, r0, r1);
#ifdef FG_CUDA
    if (in_epilogue) {  // e = exp(logits - shift); dlogits = scale[row] * e
      const Tensor e = Tensor::empty({r1 - r0, Vp}, y.dtype(), y.device());
      const Tensor scale = need_grads ? Tensor::empty({r1 - r0}, DType::F32, y.device()) : Tensor();
      add_inplace(r.loss, detail::lm_head_exp_chunk_cuda(y_c, w, V, t_c, r.count, one, e, scale));
      if (!need_grads) continue;
      const Tensor dy_c = r.dy.slice(0, r0, r1),
                   y_s = Tensor::empty(y_c.shape(), y_c.dtype(), y_c.device());
      gemm(e, false, w, false, dy_c);  // dy_c = scale * (e @ W)
      detail::scale_rows_cuda(dy_c, scale, dy_c);
      detail::scale_rows_cuda(y_c, scale, y_s);  // dW (+)= e^T (scale * y_c)
      gemm(e, true, y_s, false, r.dweight, 1.0, r0 == 0 ? 0.0 : 1.0);
      continue;
    }
#endif
    const Tensor logits = matmul(y_c, false, w, true);  // (rows, Vp), the only logits alive
    const Tensor real = logits.slice(1, 0, V);
    if (!need_grads) {
      add_inplace(r.loss, cross_entropy_forward(real, t_c, r.count).loss);
      continue;
    }
    // The loss and, over the logits, (softmax - onehot) / global count; zeros on
    // ignored rows (a chunk may have only those).
    add_inplace(r.loss, cross_entropy_with_grad(real, t_c, r.count, one).loss);
    const Tensor& dlogits = logits;
    gemm(dlogits, false, w, false, r.dy.slice(0, r0, r1));                 // dy_c = dlogits @ W
    gemm(dlogits, true, y_c, false, r.dweight, 1.0, r0 == 0 ? 0.0 : 1.0);  // dW (+)= dlogits^T y_c
  }
  if (need_grads) r.dweight = r.dweight.slice(0, 0, V);
  return r;
}

}  // namespace fg::ops
