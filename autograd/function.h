// How a differentiable function joins the graph: it computes its outputs with
// ops/, then calls record() with a backward closure that captures only what
// backward needs. See autograd/functions/add.cpp for the smallest example.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/variable.h"

namespace fg::ag {

// Gets one gradient per output (zeros where that output got none) and returns
// one gradient per input (undefined for inputs that need none).
using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs)>;

struct Node {
  std::string name;
  std::vector<Variable> inputs;
  std::vector<Shape> output_shapes;
  std::vector<DType> output_dtypes;
  std::vector<Device> output_devices;
  BackwardFn backward;
};

// Wraps `outputs` as Variables. When grad mode is on and any input requires
// grad, they get a Node that runs `backward`; otherwise they are plain leaves and
// `backward` (and everything it captured) is dropped at once.
std::vector<Variable> record(const std::string& name, const std::vector<Variable>& inputs,
                             std::vector<Tensor> outputs, BackwardFn backward);

// True when a function called now with these inputs would record a node; lets a
// function skip saving tensors for backward when nothing will use them.
bool needs_grad(const std::vector<Variable>& inputs);

// Weight gradients written straight into a parameter's buffer (what Megatron
// calls gradient-accumulation fusion). A function whose weight w is a cast of a
// parameter p (cast_source(w) is p) may record p as its input in w's place;
// its backward then asks leaf_grad_buffer(p) where p's gradient lives, writes
// the GEMM's fp32 sums there (added when `add`), and returns that same tensor
// as p's gradient, which the engine takes as already landed. No bf16 gradient,
// no conversion pass. With no buffer yet it returns a gradient as usual. A weight
// GEMM may queue its product in an open ops::GemmBatch (gemm_batchable); the engine
// runs the leaf's grad-ready hooks after the batch's flush.
Variable cast_source(const Variable& w);  // undefined when w is not a cast of a leaf
struct GradBuffer {
  Tensor buffer;     // undefined: the leaf has none (or is not a leaf)
  bool add = false;  // what the buffer holds counts: add to it; else overwrite it
};
GradBuffer leaf_grad_buffer(const Variable& leaf);
// The same, or none when the backward cannot write the buffer's dtype
// (accepts(dtype) is false): it then returns a gradient as usual.
template <class Accepts>
GradBuffer leaf_grad_buffer(const Variable& leaf, Accepts accepts) {
  GradBuffer into = leaf_grad_buffer(leaf);
  if (into.buffer.defined() && !accepts(into.buffer.dtype())) return {};
  return into;
}

}  // namespace fg::ag
