#include "autograd/op_checks.h"

namespace fg::ag {

// Placeholder until the cross_entropy checks land.
std::vector<OpCheck> cross_entropy_checks() { return {}; }

}  // namespace fg::ag
