#include "autograd/functions/cast.h"

#include "autograd/function.h"

namespace fg::ag {

namespace {
Variable record_cast(const Variable& x, Tensor y) {
  return record("cast", {x}, {std::move(y)},
                [from = x.dtype(), leaf = x.is_leaf()](const std::vector<Tensor>& g) {
                  return std::vector<Tensor>{leaf ? g[0] : g[0].to(from)};
                })[0];
}
}  // namespace

Variable cast(const Variable& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  return record_cast(x, x.data().to(dtype));
}

Variable cast(const Variable& x, const Tensor& converted) {
  FG_CHECK(converted.defined() && converted.shape() == x.shape() &&
               converted.device() == x.device(),
           "cast: the converted copy is ", converted.defined() ? converted.describe() : "undefined",
           " but x is ", x.data().describe());
  if (x.dtype() == converted.dtype()) return x;
  return record_cast(x, converted);
}

}  // namespace fg::ag
