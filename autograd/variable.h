// Variable: a tensor, its gradient and the node that produced it. The graph is
// built as differentiable functions run (autograd/functions/) and walked in
// reverse topological order by backward().
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace fg::ag {

struct Node;
struct VariableImpl;

class Variable {
 public:
  Variable() = default;
  // A leaf. Parameters are leaves with requires_grad = true.
  explicit Variable(Tensor data, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& data() const;
  // Replaces the value in place (optimizer steps, loading a checkpoint); keeps grad and hooks.
  void set_data(Tensor data);
  const Tensor& grad() const;  // undefined until backward reached this leaf
  void set_grad(Tensor grad);
  void zero_grad();  // drops the gradient (the next backward allocates it)
  // Keeps the gradient's buffer but treats it as zero: the next backward copies
  // into it instead of adding (no memset, no read). Training loops whose
  // gradient buffers must stay put (a CUDA graph) use it.
  void zero_grad_in_place();
  bool grad_zeroed_in_place() const;  // still zero: no backward has written it since
  bool requires_grad() const;
  bool is_leaf() const;
  const std::shared_ptr<Node>& grad_fn() const;
  int output_nr() const;
  Variable detach() const;  // same data, no history, no grad

  const Shape& shape() const { return data().shape(); }
  int64_t size(int d) const { return data().size(d); }
  DType dtype() const { return data().dtype(); }
  Device device() const { return data().device(); }

  // Called on a leaf once backward has accumulated its last gradient contribution
  // in this pass (data-parallel training starts the all-reduce there).
  void register_grad_ready_hook(std::function<void(Variable&)> hook);

  // Backward from this variable. grad_output defaults to 1 for a one-element variable.
  void backward(const Tensor& grad_output = Tensor()) const;

  VariableImpl* impl() const { return impl_.get(); }
  bool same(const Variable& other) const { return impl_ == other.impl_; }

 private:
  friend Variable make_non_leaf(Tensor, std::shared_ptr<Node>, int);
  friend Variable stand_in_leaf(Tensor, bool);
  std::shared_ptr<VariableImpl> impl_;
};

// A leaf standing in for a variable of an outer graph while a region is recomputed
// (checkpoint): its gradient is taken as backward delivers it, as a node's output's is,
// without the copy a parameter's first gradient gets (a parameter's is added to in place
// later; this one is only read, once backward returns).
Variable stand_in_leaf(Tensor data, bool requires_grad);

// Backward from several roots at once, each with its own incoming gradient.
void backward(const std::vector<Variable>& roots, const std::vector<Tensor>& grad_outputs);

// Gradient recording is on by default; NoGradGuard turns it off in its scope (thread-local).
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};
// Turns recording back on inside a NoGradGuard (checkpoint's recomputation uses it).
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace fg::ag
