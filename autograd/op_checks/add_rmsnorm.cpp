#include "autograd/op_checks.h"

namespace fg::ag {

// Placeholder until the add_rmsnorm checks land.
std::vector<OpCheck> add_rmsnorm_checks() { return {}; }

}  // namespace fg::ag
