#include "autograd/variable.h"

#include <unordered_map>
#include <unordered_set>

#include "autograd/function.h"
#include "ops/add/add.h"
#include "ops/gemm/gemm.h"

namespace fg::ag {

struct VariableImpl {
  Tensor data;
  Tensor grad;
  bool grad_stale = false;  // zero_grad_in_place: grad's contents count as zero
  bool stand_in = false;    // stand_in_leaf: its gradient is taken as delivered
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;  // null for leaves
  int output_nr = 0;
  std::vector<std::function<void(Variable&)>> ready_hooks;
};

namespace {
thread_local bool g_grad_enabled = true;

// A leaf's gradient is its own tensor in the leaf's dtype, summed into in place
// across backward calls. g may come in another dtype (a cast into the leaf
// leaves the conversion to it).
void accumulate(Tensor& into, const Tensor& g, DType dtype) {
  if (!into.defined()) {
    // Own it: g may alias a tensor backward still uses.
    into = g.dtype() == dtype ? g.clone() : g.to(dtype);
  } else {
    ops::add_inplace(into, g.dtype() == dtype ? g : g.to(dtype));
  }
}

// A leaf's last contribution has been sent. Its hooks read the gradient, so they run
// after a product an open GemmBatch still holds into it (at its flush), or now.
void run_ready_hooks(const Variable& v) {
  if (v.impl()->ready_hooks.empty()) return;
  ops::after_gemm_batch(v.impl()->grad, [leaf = v]() mutable {
    for (auto& hook : leaf.impl()->ready_hooks) hook(leaf);
  });
}

// The gradient flowing into a node's output: the first one is taken as it is (no
// copy; it may be shared with another edge), so a second one is added out of place.
void accumulate_shared(Tensor& into, const Tensor& g) {
  into = into.defined() ? ops::add_forward(into, g) : g;
}
}  // namespace

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }
EnableGradGuard::EnableGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = true; }
EnableGradGuard::~EnableGradGuard() { g_grad_enabled = previous_; }

Variable::Variable(Tensor data, bool requires_grad) : impl_(std::make_shared<VariableImpl>()) {
  impl_->data = std::move(data);
  impl_->requires_grad = requires_grad;
}

Variable stand_in_leaf(Tensor data, bool requires_grad) {
  Variable v(std::move(data), requires_grad);
  v.impl_->stand_in = true;
  return v;
}

Variable make_non_leaf(Tensor data, std::shared_ptr<Node> node, int output_nr) {
  Variable v(std::move(data), true);
  v.impl_->grad_fn = std::move(node);
  v.impl_->output_nr = output_nr;
  return v;
}

const Tensor& Variable::data() const {
  FG_CHECK(impl_, "use of an undefined Variable");
  return impl_->data;
}
void Variable::set_data(Tensor data) { impl_->data = std::move(data); }
const Tensor& Variable::grad() const {
  FG_CHECK(impl_, "use of an undefined Variable");
  return impl_->grad;
}
void Variable::set_grad(Tensor grad) {
  impl_->grad = std::move(grad);
  impl_->grad_stale = false;
}
void Variable::zero_grad() {
  impl_->grad = Tensor();
  impl_->grad_stale = false;
}
void Variable::zero_grad_in_place() { impl_->grad_stale = impl_->grad.defined(); }
bool Variable::grad_zeroed_in_place() const { return impl_->grad_stale; }
bool Variable::requires_grad() const { return impl_ && impl_->requires_grad; }
bool Variable::is_leaf() const { return !impl_->grad_fn; }
const std::shared_ptr<Node>& Variable::grad_fn() const { return impl_->grad_fn; }
int Variable::output_nr() const { return impl_->output_nr; }
Variable Variable::detach() const { return Variable(data(), false); }
void Variable::register_grad_ready_hook(std::function<void(Variable&)> hook) {
  FG_CHECK(is_leaf(), "grad-ready hooks go on leaves (parameters) only");
  impl_->ready_hooks.push_back(std::move(hook));
}

void Variable::backward(const Tensor& grad_output) const {
  Tensor g = grad_output;
  if (!g.defined()) {
    FG_CHECK(data().numel() == 1, "backward: implicit gradient needs a one-element output, got ",
             data().shape_str());
    g = Tensor::ones(data().shape(), data().dtype(), data().device());
  }
  ag::backward({*this}, {g});
}

// Kahn's algorithm over the nodes reachable from the roots: a node runs once
// every node that consumes one of its outputs has sent its gradient.
void backward(const std::vector<Variable>& roots, const std::vector<Tensor>& grad_outputs) {
  FG_CHECK(roots.size() == grad_outputs.size(), "backward: ", roots.size(), " roots but ",
           grad_outputs.size(), " gradients");
  NoGradGuard no_grad;  // backward closures do not build graph
  std::unordered_map<Node*, int> pending;            // consumers not yet run
  std::unordered_map<VariableImpl*, int> leaf_uses;  // contributions still to come
  std::unordered_map<Node*, std::shared_ptr<Node>> keep;
  std::vector<Node*> stack;
  auto visit_edge = [&](const Variable& v) {
    if (!v.requires_grad()) return;
    if (v.is_leaf()) {
      leaf_uses[v.impl()] += 1;
      return;
    }
    Node* n = v.grad_fn().get();
    if (pending[n]++ == 0 && !keep.count(n)) {
      keep[n] = v.grad_fn();
      stack.push_back(n);
    }
  };
  for (const Variable& r : roots) {
    FG_CHECK(r.requires_grad(), "backward: a root does not require grad (no parameter reaches it)");
    visit_edge(r);
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Variable& in : n->inputs) visit_edge(in);
  }

  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  std::vector<Node*> ready;
  auto send = [&](const Variable& v, const Tensor& g) {
    if (!v.requires_grad() || !g.defined()) {
      if (v.requires_grad() && v.is_leaf() && --leaf_uses[v.impl()] == 0) {
        if (v.impl()->grad_stale) {  // the hooks read it: make the zero real
          ops::gemm_batch_sync(v.impl()->grad);
          v.impl()->grad.zero_();
          v.impl()->grad_stale = false;
        }
        run_ready_hooks(v);
      } else if (v.requires_grad() && !v.is_leaf() && --pending[v.grad_fn().get()] == 0) {
        ready.push_back(v.grad_fn().get());
      }
      return;
    }
    FG_CHECK(g.shape() == v.shape(), "backward: gradient ", g.shape_str(), " for a variable of shape ",
             v.data().shape_str());
    if (v.is_leaf()) {
      Tensor& buffer = v.impl()->grad;
      if (v.impl()->stand_in) {
        // Never a parameter's buffer; a second gradient may be the first's own tensor (add's
        // backward sends one to both inputs), so it is added, not taken as landed.
        accumulate_shared(buffer, g.dtype() == v.dtype() ? g : g.to(v.dtype()));
      } else if (buffer.defined() && g.raw_data() == buffer.raw_data() &&
                 g.dtype() == buffer.dtype()) {
        // Written in place by the backward (leaf_grad_buffer), or queued to be (GemmBatch).
        v.impl()->grad_stale = false;
      } else {
        ops::gemm_batch_sync(buffer);  // a queued product into it goes first
        if (v.impl()->grad_stale) {
          v.impl()->grad.copy_(g);  // converts, when g comes in another dtype
          v.impl()->grad_stale = false;
        } else {
          accumulate(v.impl()->grad, g, v.dtype());
        }
      }
      if (--leaf_uses[v.impl()] == 0) run_ready_hooks(v);
      return;
    }
    Node* n = v.grad_fn().get();
    auto& buf = buffers[n];
    if (buf.empty()) buf.resize(n->output_shapes.size());
    accumulate_shared(buf[v.output_nr()], g);
    if (--pending[n] == 0) ready.push_back(n);
  };
  for (size_t i = 0; i < roots.size(); ++i) send(roots[i], grad_outputs[i]);

  while (!ready.empty()) {
    Node* n = ready.back();
    ready.pop_back();
    std::vector<Tensor> grads = std::move(buffers[n]);
    buffers.erase(n);
    grads.resize(n->output_shapes.size());
    for (size_t i = 0; i < grads.size(); ++i)
      if (!grads[i].defined())
        grads[i] = Tensor::zeros(n->output_shapes[i], n->output_dtypes[i], n->output_devices[i]);
    std::vector<Tensor> input_grads = n->backward(grads);
    FG_CHECK(input_grads.size() == n->inputs.size(), "backward of ", n->name, " returned ",
             input_grads.size(), " gradients for ", n->inputs.size(), " inputs");
    n->backward = nullptr;  // frees what the closure saved for backward
    for (size_t i = 0; i < n->inputs.size(); ++i) send(n->inputs[i], input_grads[i]);
  }
}

}  // namespace fg::ag
