#include "autograd/functions/embedding.h"

#include "autograd/op_checks.h"

namespace fg::ag {

namespace {
// Ids (repeats included) of the given shape, cycling through `pattern`.
Tensor make_ids(const Shape& shape, const std::vector<int32_t>& pattern) {
  std::vector<int32_t> v(shape_numel(shape));
  for (size_t i = 0; i < v.size(); ++i) v[i] = pattern[i % pattern.size()];
  return Tensor::from_ints(v, shape);
}

OpCheck embedding_case(const char* shapes, int64_t vocab, int64_t dim, Tensor ids, uint64_t seed) {
  return {"embedding", shapes, [=] {
            return gradcheck(
                [ids](const std::vector<Variable>& in) {
                  return std::vector<Variable>{embedding(in[0], ids)};
                },
                {random_leaf({vocab, dim}, seed)});
          }};
}
}  // namespace

std::vector<OpCheck> embedding_checks() {
  return {
      embedding_case("weight (11, 5), ids (3, 7), repeated ids", 11, 5,
                     make_ids({3, 7}, {4, 0, 10, 4, 7, 2, 4, 9, 1}), 11),
      embedding_case("weight (13, 3), ids (5,), one id 5 times", 13, 3, make_ids({5}, {12}), 12),
      embedding_case("weight (7, 9), ids (2, 3, 5), rows 2, 6 unused", 7, 9,
                     make_ids({2, 3, 5}, {0, 5, 3, 1, 3, 4, 0}), 13),
  };
}

}  // namespace fg::ag
