// Activation recomputation. checkpoint(fn, inputs) runs fn with recording off,
// so none of fn's intermediates stay alive: the graph keeps only `inputs` (which
// exist anyway) and the outputs. In backward it runs fn again with recording on,
// backpropagates through that fresh sub-graph and frees it. Parameters that fn
// captures receive their gradients during that inner backward.
#pragma once

#include <functional>
#include <vector>

#include "autograd/variable.h"

namespace fg::ag {

using RegionFn = std::function<std::vector<Variable>(const std::vector<Variable>&)>;

std::vector<Variable> checkpoint(const RegionFn& fn, const std::vector<Variable>& inputs);

// True while checkpoint's backward runs a region again to rebuild its graph (false in its
// first, recording-off run and in any checkpoint nested inside). The region's outputs are
// known then (the first run made them), so a region may record its last products' nodes
// without computing their values (record_linear with an unwritten output, say): backward
// reads no node's own output.
bool recomputing();

}  // namespace fg::ag
