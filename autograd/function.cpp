#include "autograd/function.h"

namespace fg::ag {

Variable make_non_leaf(Tensor data, std::shared_ptr<Node> node, int output_nr);

bool needs_grad(const std::vector<Variable>& inputs) {
  if (!grad_enabled()) return false;
  for (const Variable& v : inputs)
    if (v.requires_grad()) return true;
  return false;
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
