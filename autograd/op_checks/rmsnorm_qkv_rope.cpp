#include "autograd/functions/rmsnorm_qkv_rope.h"

#include "autograd/op_checks.h"

namespace fg::ag {

namespace {
struct Case {
  int64_t B, T, H, Hkv, hd, rotary;
  bool residual, bias, per_batch_positions;
  int32_t offset;
};

// attend: the layer with attention over its q, k, v (rmsnorm_qkv_rope_attention).
OpCheck fused_case(const char* shapes, Case c, uint64_t seed, bool attend = false) {
  return {attend ? "rmsnorm_qkv_rope_attention" : "rmsnorm_qkv_rope", shapes, [=] {
            ops::QKVRoPEConfig cfg;
            cfg.hidden_dim = c.H * c.hd;
            cfg.num_heads = c.H;
            cfg.num_kv_heads = c.Hkv;
            cfg.rotary_dim = c.rotary;
            cfg.add_residual = c.residual;
            cfg.use_bias = c.bias;
            const int64_t D = cfg.hidden_dim;
            std::vector<int32_t> pos;
            for (int64_t b = 0; b < (c.per_batch_positions ? c.B : 1); ++b)
              for (int64_t t = 0; t < c.T; ++t)
                pos.push_back(c.offset + static_cast<int32_t>(5 * b + t));
            Tensor positions = c.per_batch_positions ? Tensor::from_ints(pos, {c.B, c.T})
                                                     : Tensor::from_ints(pos, {c.T});
            // Inputs: x, residual, norm weight, wqkv, bias (the last two may be absent).
            std::vector<Variable> in = {
                random_leaf({c.B, c.T, D}, seed),
                c.residual ? random_leaf({c.B, c.T, D}, seed + 1) : Variable(),
                random_leaf({D}, seed + 2), random_leaf({cfg.qkv_dim(), D}, seed + 3, 0.5),
                c.bias ? random_leaf({cfg.qkv_dim()}, seed + 4) : Variable()};
            std::vector<Variable> leaves;
            for (const Variable& v : in)
              if (v.defined()) leaves.push_back(v);
            return gradcheck(
                [=](const std::vector<Variable>& v) {
                  size_t i = 0;
                  Variable x = v[i++];
                  Variable residual = c.residual ? v[i++] : Variable();
                  Variable norm_weight = v[i++];
                  Variable wqkv = v[i++];
                  Variable bias = c.bias ? v[i++] : Variable();
                  if (attend) {
                    QKVAttentionResult a = rmsnorm_qkv_rope_attention(cfg, x, positions, residual,
                                                                      norm_weight, wqkv, bias);
                    return std::vector<Variable>{a.out, a.h};
                  }
                  QKVRoPEResult r =
                      rmsnorm_qkv_rope(cfg, x, positions, residual, norm_weight, wqkv, bias);
                  return std::vector<Variable>{r.q, r.k, r.v, r.h};
                },
                leaves);
          }};
}
}  // namespace

std::vector<OpCheck> rmsnorm_qkv_rope_checks() {
  return {
      fused_case("x (2, 5, 18), GQA 3/1, rot 4, pos 7+t, bias",
                 {2, 5, 3, 1, 6, 4, true, true, false, 7}, 71),
      fused_case("x (3, 4, 10), H 1, rot 10, pos (B, T), no res",
                 {3, 4, 1, 1, 10, 10, false, false, true, 0}, 76),
      fused_case("x (2, 3, 10), GQA 5/1, hd 2, rot 2, no bias",
                 {2, 3, 5, 1, 2, 2, true, false, false, 7}, 81),
      fused_case("x (2, 3, 20), H 2, rot 6 of 10, pos 3+t, bias",
                 {2, 3, 2, 2, 10, 6, false, true, false, 3}, 86),
      fused_case("x (2, 5, 18), GQA 3/1, rot 4, pos 7+t, bias; attention",
                 {2, 5, 3, 1, 6, 4, true, true, false, 7}, 91, true),
      fused_case("x (2, 4, 16), H 2, rot 8, pos (B, T), no res, no bias; attention",
                 {2, 4, 2, 2, 8, 8, false, false, true, 2}, 96, true),
  };
}

}  // namespace fg::ag
