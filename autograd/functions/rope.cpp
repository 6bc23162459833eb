#include "autograd/functions/rope.h"

#include "autograd/function.h"
#include "ops/rope/rope.h"

namespace fg::ag {

Variable rope(const Variable& x, const Tensor& positions, int64_t rotary_dim, double theta) {
  Tensor y = ops::rope_forward(x.data(), positions, rotary_dim, theta);
  // A rotation: backward is the inverse rotation and needs only the positions.
  return record("rope", {x}, {y}, [positions, rotary_dim, theta](const std::vector<Tensor>& g) {
    return std::vector<Tensor>{ops::rope_backward(g[0], positions, rotary_dim, theta)};
  })[0];
}

}  // namespace fg::ag
