#include "autograd/function.h"

#include "ops/gemm/gemm.h"

namespace fg::ag {

Variable make_non_leaf(Tensor data, std::shared_ptr<Node> node, int output_nr);

bool needs_grad(const std::vector<Variable>& inputs) {
  if (!grad_enabled()) return false;
  for (const Variable& v : inputs)
    if (v.requires_grad()) return true;
  return false;
}

Variable cast_source(const Variable& w) {
  if (!w.defined() || w.is_leaf()) return Variable();
  const Node& n = *w.grad_fn();
  if (n.name != "cast" || !n.inputs[0].is_leaf() || !n.inputs[0].requires_grad()) return Variable();
  return n.inputs[0];
}

GradBuffer leaf_grad_buffer(const Variable& leaf) {
  if (!leaf.defined() || !leaf.is_leaf() || !leaf.grad().defined()) return {};
  // The caller writes it next: a product still queued into it (GemmBatch) goes first.
  ops::gemm_batch_sync(leaf.grad());
  return {leaf.grad(), !leaf.grad_zeroed_in_place()};
}

std::vector<Variable> record(const std::string& name, const std::vector<Variable>& inputs,
                             std::vector<Tensor> outputs, BackwardFn backward) {
  std::vector<Variable> result;
  result.reserve(outputs.size());
  if (!needs_grad(inputs)) {
    for (Tensor& t : outputs) result.emplace_back(std::move(t), false);
    return result;
  }
  auto node = std::make_shared<Node>();
  node->name = name;
  for (const Variable& v : inputs) node->inputs.push_back(v.defined() ? v : Variable());
  for (const Tensor& t : outputs) {
    node->output_shapes.push_back(t.shape());
    node->output_dtypes.push_back(t.dtype());
    node->output_devices.push_back(t.device());
  }
  node->backward = std::move(backward);
  for (size_t i = 0; i < outputs.size(); ++i)
    result.push_back(make_non_leaf(std::move(outputs[i]), node, static_cast<int>(i)));
  return result;
}

}  // namespace fg::ag
