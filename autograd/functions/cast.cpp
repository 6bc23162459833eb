#include "autograd/functions/cast.h"

#include "autograd/function.h"

namespace fg::ag {

Variable cast(const Variable& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  return record("cast", {x}, {x.data().to(dtype)}, [from = x.dtype()](const std::vector<Tensor>& g) {
    return std::vector<Tensor>{g[0].to(from)};
  })[0];
}

}  // namespace fg::ag
