#include "autograd/functions/add.h"
#include "autograd/op_checks.h"

namespace fg::ag {

std::vector<OpCheck> add_checks() {
  return {{"add", "a (3, 5, 7), b (3, 5, 7)", [] {
             return gradcheck([](const std::vector<Variable>& in) {
               return std::vector<Variable>{add(in[0], in[1])};
             }, {random_leaf({3, 5, 7}, 1), random_leaf({3, 5, 7}, 2)});
           }}};
}

}  // namespace fg::ag
