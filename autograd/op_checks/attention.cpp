#include "autograd/functions/attention.h"

#include "autograd/op_checks.h"

namespace fg::ag {

namespace {
// One causal-attention check: q (B, T, H, hd), k and v (B, T, Hkv, hd), inputs
// uniform in [-scale, scale] (a larger scale gives sharper softmax rows).
OpCheck attention_check(std::string shapes, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                        int64_t hd, uint64_t seed, double scale = 1.0) {
  return {
      "attention", std::move(shapes), [=] {
        return gradcheck(
            [](const std::vector<Variable>& in) {
              return std::vector<Variable>{attention(in[0], in[1], in[2])};
            },
            {random_leaf({B, T, H, hd}, seed, scale), random_leaf({B, T, Hkv, hd}, seed + 1, scale),
             random_leaf({B, T, Hkv, hd}, seed + 2, scale)});
      }};
}
}  // namespace

std::vector<OpCheck> attention_checks() {
  return {
      attention_check("q (2, 5, 6, 3), kv (2, 5, 2, 3), GQA", 2, 5, 6, 2, 3, 11),
      attention_check("q (1, 7, 3, 5), kv (1, 7, 1, 5), MQA, sharp", 1, 7, 3, 1, 5, 21, 2.5),
      attention_check("q (3, 4, 2, 5), kv (3, 4, 2, 5), MHA", 3, 4, 2, 2, 5, 31),
      attention_check("q (2, 1, 3, 5), kv (2, 1, 1, 5), T=1", 2, 1, 3, 1, 5, 41),
      attention_check("q (2, 9, 4, 7), kv (2, 9, 2, 7), GQA", 2, 9, 4, 2, 7, 51),
  };
}

}  // namespace fg::ag
