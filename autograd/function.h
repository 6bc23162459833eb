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

}  // namespace fg::ag
