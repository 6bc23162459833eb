// The Llama-style GPT of DESIGN.md, built from the fused ops and autograd.
// One parameter table (names, shapes, init, decay) serves the model, the
// optimizer and the checkpoint.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "trainer/config.h"

namespace fg::trainer {

struct ParamSpec {
  enum class Init { Normal, ResidualNormal, Ones, Zeros };
  std::string name;
  Shape shape;
  Init init;
  bool decay;  // AdamW weight decay: matrices and embeddings only
};

// Names and shapes exactly as DESIGN.md lists them, in a fixed order.
std::vector<ParamSpec> parameter_table(const GPTConfig& cfg);

// What backward recomputes instead of keeping: nothing, the attention core of
// each layer, or each whole layer.
enum class Recompute { None, Attn, Full };
Recompute parse_recompute(const std::string& name);

class GPT {
 public:
  // Parameters drawn from Philox(seed) on the CPU in table order, then moved to
  // device: the same seed gives the same weights everywhere. They are kept in
  // `dtype` (the master copy: f32, or f64 for gradient checks); the forward pass
  // computes in `compute_dtype` (bf16 for mixed precision on the GPU), casting
  // each weight where it is used so gradients flow back into the masters
  // (default: the same as dtype).
  GPT(const GPTConfig& cfg, uint64_t seed, Device device = Device::cpu(),
      DType dtype = DType::F32, std::optional<DType> compute_dtype = std::nullopt);

  const GPTConfig& config() const { return cfg_; }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }
  DType compute_dtype() const { return compute_dtype_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const std::vector<ag::Variable>& params() const { return params_; }
  int64_t num_params() const;

  // Mean next-token cross-entropy. idx, targets: (B, T) i32 on any device (moved
  // to the model's); targets of -1 are ignored. compute_copies: empty, or the
  // parameters in compute_dtype() as make_compute_copies() returns them, kept
  // equal to the cast masters by the caller (AdamW::keep_copies): the forward
  // then reads them instead of casting every weight.
  ag::Variable loss(const Tensor& idx, const Tensor& targets, Recompute recompute = Recompute::None,
                    const std::vector<Tensor>& compute_copies = {}) const;
  // Every parameter cast to compute_dtype(), in table order; empty when that is
  // the parameters' own dtype.
  std::vector<Tensor> make_compute_copies() const;
  // The same with explicit parameter variables in table order (gradcheck --model).
  ag::Variable loss_with(const std::vector<ag::Variable>& params, const Tensor& idx,
                         const Tensor& targets, Recompute recompute) const;
  // Logits (B, T, V) without recording a graph.
  Tensor logits(const Tensor& idx) const;

  void zero_grad() const;

 private:
  // The final normalized hidden states (B*T, D) and the (cast) LM head weight.
  struct Hidden {
    ag::Variable y;
    ag::Variable head;
  };
  Hidden forward(const std::vector<ag::Variable>& params, const std::vector<Tensor>& copies,
                 const Tensor& idx, Recompute recompute) const;
  ag::Variable loss_from(const std::vector<ag::Variable>& params, const std::vector<Tensor>& copies,
                         const Tensor& idx, const Tensor& targets, Recompute recompute) const;

  GPTConfig cfg_;
  Device device_;
  DType dtype_;
  DType compute_dtype_;
  std::vector<ParamSpec> specs_;
  std::vector<ag::Variable> params_;
};

}  // namespace fg::trainer
