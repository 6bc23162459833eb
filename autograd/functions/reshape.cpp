#include "autograd/functions/reshape.h"

#include "autograd/function.h"

namespace fg::ag {

Variable reshape(const Variable& x, const Shape& shape) {
  Tensor y = x.data().reshape(shape);
  return record("reshape", {x}, {y}, [in_shape = x.shape()](const std::vector<Tensor>& g) {
    return std::vector<Tensor>{g[0].reshape(in_shape)};
  })[0];
}

}  // namespace fg::ag
