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

}  // namespace fg::ag
