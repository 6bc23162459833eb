#include "autograd/checkpoint.h"

#include "autograd/function.h"

namespace fg::ag {

namespace {
thread_local bool g_recomputing = false;

// Sets recomputing() for a scope, restoring it after (regions nest).
class RecomputingScope {
 public:
  explicit RecomputingScope(bool on) : previous_(g_recomputing) { g_recomputing = on; }
  ~RecomputingScope() { g_recomputing = previous_; }
  RecomputingScope(const RecomputingScope&) = delete;
  RecomputingScope& operator=(const RecomputingScope&) = delete;

 private:
  bool previous_;
};
}  // namespace

bool recomputing() {
  return g_recomputing;
}

std::vector<Variable> checkpoint(const RegionFn& fn, const std::vector<Variable>& inputs) {
  std::vector<Tensor> outputs;
  {
    NoGradGuard no_grad;  // nothing inside the region is recorded, so nothing is kept
    RecomputingScope first_run(false);  // its outputs are wanted, even inside a recomputation
    for (Variable& out : fn(inputs)) outputs.push_back(out.data());
  }
  auto backward_fn = [fn, inputs](const std::vector<Tensor>& grad_outputs) {
    // Fresh leaves stand for the inputs, so the recomputed sub-graph ends here.
    std::vector<Variable> leaves;
    for (const Variable& in : inputs)
      leaves.push_back(stand_in_leaf(in.defined() ? in.data() : Tensor(), in.requires_grad()));
    std::vector<Variable> outs;
    {
      EnableGradGuard enable;
      RecomputingScope again(true);
      outs = fn(leaves);
    }
    std::vector<Variable> roots;
    std::vector<Tensor> grads;
    for (size_t i = 0; i < outs.size(); ++i) {
      if (!outs[i].requires_grad()) continue;
      roots.push_back(outs[i]);
      grads.push_back(grad_outputs[i]);
    }
    if (!roots.empty()) backward(roots, grads);
    std::vector<Tensor> input_grads;
    for (const Variable& leaf : leaves) input_grads.push_back(leaf.defined() ? leaf.grad() : Tensor());
    return input_grads;
  };
  return record("checkpoint", inputs, std::move(outputs), backward_fn);
}

}  // namespace fg::ag
