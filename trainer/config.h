// GPTConfig: the model's shape in one place, with one validate() that names the
// bad field. visit_fields() is the one list of fields: the command line, the
// checkpoint's /config group and the checks all walk it.
#pragma once

#include <cstdint>
#include <string>

namespace fg::trainer {

struct GPTConfig {
  int64_t vocab_size = 64;
  int64_t n_layer = 2;
  int64_t n_head = 4;
  int64_t n_kv_head = 0;  // 0: same as n_head
  int64_t d_model = 64;
  int64_t d_ff = 0;  // 0: round_up(8 * d_model / 3, 64)
  int64_t max_seq_len = 64;
  double rope_theta = 10000.0;
  int64_t rotary_dim = 0;  // 0: head_dim
  double norm_eps = 1e-5;
  bool qkv_bias = false;
  bool tie_embeddings = false;

  int64_t head_dim() const { return d_model / n_head; }
  int64_t kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int64_t ff_dim() const { return d_ff > 0 ? d_ff : (8 * d_model / 3 + 63) / 64 * 64; }
  int64_t rope_dim() const { return rotary_dim > 0 ? rotary_dim : head_dim(); }
  int64_t qkv_dim() const { return (n_head + 2 * kv_heads()) * head_dim(); }

  // Throws fg::Error naming the first bad field and why.
  void validate() const;

  // One line of help per field, for the command line.
  static const char* field_help(const std::string& name);

  // Calls f(name, field&) for every field: int64_t&, double& or bool&.
  template <class F>
  void visit_fields(F&& f) {
    f("vocab_size", vocab_size);
    f("n_layer", n_layer);
    f("n_head", n_head);
    f("n_kv_head", n_kv_head);
    f("d_model", d_model);
    f("d_ff", d_ff);
    f("max_seq_len", max_seq_len);
    f("rope_theta", rope_theta);
    f("rotary_dim", rotary_dim);
    f("norm_eps", norm_eps);
    f("qkv_bias", qkv_bias);
    f("tie_embeddings", tie_embeddings);
  }
  template <class F>
  void visit_fields(F&& f) const {
    const_cast<GPTConfig*>(this)->visit_fields([&](const char* name, auto& v) {
      f(name, static_cast<const std::remove_reference_t<decltype(v)>&>(v));
    });
  }
};

}  // namespace fg::trainer
