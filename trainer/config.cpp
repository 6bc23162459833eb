#include "trainer/config.h"

#include "core/error.h"

namespace fg::trainer {

void GPTConfig::validate() const {
  FG_CHECK(vocab_size > 0, "config: vocab_size must be > 0, got ", vocab_size);
  FG_CHECK(n_layer > 0, "config: n_layer must be > 0, got ", n_layer);
  FG_CHECK(n_head > 0, "config: n_head must be > 0, got ", n_head);
  FG_CHECK(n_kv_head >= 0, "config: n_kv_head must be >= 0 (0 means n_head), got ", n_kv_head);
  FG_CHECK(n_head % kv_heads() == 0, "config: n_head (", n_head,
           ") must be a multiple of n_kv_head (", kv_heads(), ")");
  FG_CHECK(d_model > 0 && d_model % n_head == 0, "config: d_model (", d_model,
           ") must be a positive multiple of n_head (", n_head, ")");
  FG_CHECK(d_ff >= 0, "config: d_ff must be >= 0 (0 means round_up(8*d_model/3, 64)), got ", d_ff);
  FG_CHECK(max_seq_len > 0, "config: max_seq_len must be > 0, got ", max_seq_len);
  FG_CHECK(rope_theta > 0, "config: rope_theta must be > 0, got ", rope_theta);
  FG_CHECK(rotary_dim >= 0 && rope_dim() % 2 == 0 && rope_dim() <= head_dim(),
           "config: rotary_dim (", rope_dim(), ") must be even and <= head_dim (", head_dim(), ")");
  FG_CHECK(norm_eps > 0, "config: norm_eps must be > 0, got ", norm_eps);
}

const char* GPTConfig::field_help(const std::string& name) {
  static const std::pair<const char*, const char*> kHelp[] = {
      {"vocab_size", "vocabulary size V (0: the data's vocabulary)"},
      {"n_layer", "transformer layers L"},
      {"n_head", "query heads H"},
      {"n_kv_head", "key/value heads Hkv for grouped-query attention (0: n_head)"},
      {"d_model", "model width D = n_head * head_dim"},
      {"d_ff", "SwiGLU hidden width F (0: round_up(8 d_model / 3, 64))"},
      {"max_seq_len", "longest sequence the model accepts"},
      {"rope_theta", "RoPE base"},
      {"rotary_dim", "dims of each head that RoPE rotates, even (0: head_dim)"},
      {"norm_eps", "RMSNorm epsilon"},
      {"qkv_bias", "add a bias to the QKV projection"},
      {"tie_embeddings", "share tok_embeddings.weight with the LM head"},
  };
  for (const auto& [field, help] : kHelp)
    if (name == field) return help;
  return "";
}

}  // namespace fg::trainer
