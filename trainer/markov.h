// The built-in synthetic corpus: a seeded random order-k Markov source over a
// small vocabulary. Its entropy rate is computed exactly, so a run on it can
// report how far the training loss is from the best any model can do.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fg::trainer {

class MarkovSource {
 public:
  // Each of the vocab^order contexts gets a random next-token distribution, a
  // Dirichlet(concentration) draw: small concentrations give
  // peaked, low-entropy (learnable) rows; tiny ones make the chain
  // deterministic. vocab^order must be <= 2^20.
  MarkovSource(int64_t vocab, int order, uint64_t seed, double concentration = 0.3);

  // Exact entropy rate in nats/token: sum_c pi(c) H(P(.|c)), the loss a model
  // that sees at least `order` previous tokens converges to at best.
  double entropy_rate() const { return entropy_rate_; }

  // n tokens: the first `order` spell a context drawn from pi, the rest follow
  // the chain. The same (source, n, seed) gives the same tokens everywhere.
  std::vector<int32_t> generate(int64_t n, uint64_t seed) const;

  // Contexts are the last `order` tokens read as a base-vocab number, the
  // oldest token the most significant digit.
  int64_t num_contexts() const { return num_contexts_; }
  int64_t next_context(int64_t context, int32_t token) const {
    return (context * vocab_ + token) % num_contexts_;
  }
  double probability(int64_t context, int32_t next) const {
    return probs_[context * vocab_ + next];
  }
  const std::vector<double>& stationary() const { return stationary_; }  // pi over contexts

  int64_t vocab() const { return vocab_; }
  int order() const { return order_; }
  // One line for the log: sizes, seed and the entropy rate (the best possible loss).
  std::string describe() const;

 private:
  void compute_stationary();

  int64_t vocab_;
  int order_;
  uint64_t seed_;
  double concentration_;
  int64_t num_contexts_;
  std::vector<double> probs_;       // (num_contexts, vocab), rows sum to 1
  std::vector<double> stationary_;  // (num_contexts)
  double entropy_rate_ = 0.0;
};

}  // namespace fg::trainer
