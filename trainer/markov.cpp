#include "trainer/markov.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/philox.h"

namespace fg::trainer {

namespace {

constexpr int64_t kMaxContexts = int64_t{1} << 20;
// Philox offsets: the table's draws use offset = context (< 2^20) plus a stream
// constant; sampling uses offsets of its own, so a sample seeded like the table
// does not reuse the table's numbers.
constexpr uint64_t kAcceptStream = uint64_t{1} << 32;
constexpr uint64_t kBoostStream = uint64_t{2} << 32;
constexpr uint64_t kMaxGammaTries = 64;
constexpr uint64_t kStartOffset = uint64_t{1} << 40;
constexpr uint64_t kStepOffset = kStartOffset + 1;
constexpr double kStationaryTol = 1e-13;                // L1 change per iteration
constexpr int64_t kPowerWorkBudget = int64_t{1} << 33;  // multiply-adds, a few seconds

// Inverse CDF: the first index whose running sum reaches u in (0, 1]. Rounding
// can leave the total just under u; then the last index with mass is taken,
// never one of probability 0.
int64_t sample_index(const double* p, int64_t n, double u) {
  double acc = 0.0;
  int64_t last = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] <= 0.0) continue;
    acc += p[i];
    last = i;
    if (u <= acc) return i;
  }
  return last;
}

// log of a Gamma(a, 1) draw for entry j of context c. Gamma(a) = Gamma(a + 1) *
// U^(1/a) (so a < 1 works); Gamma(a + 1) by Marsaglia-Tsang rejection, which
// accepts > 95 % of tries. Every draw has its own Philox counters, so the table
// depends only on the seed.
double log_gamma_variate(uint64_t seed, int64_t c, int64_t j, double a) {
  const uint64_t offset = static_cast<uint64_t>(c);
  const uint64_t base = static_cast<uint64_t>(j) * kMaxGammaTries;
  const double d = a + 1.0 - 1.0 / 3.0;
  const double k = 1.0 / std::sqrt(9.0 * d);
  double log_g = std::log(d);  // the mode; only if every try is rejected (p < 1e-80)
  for (uint64_t t = 0; t < kMaxGammaTries; ++t) {
    double x = philox_normal(seed, offset, base + t);
    double v = 1.0 + k * x;
    if (v <= 0.0) continue;
    v = v * v * v;
    double u = philox_uniform(seed, offset + kAcceptStream, base + t);
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) {
      log_g = std::log(d * v);
      break;
    }
  }
  return log_g + std::log(philox_uniform(seed, offset + kBoostStream, j)) / a;
}

}  // namespace

MarkovSource::MarkovSource(int64_t vocab, int order, uint64_t seed, double concentration)
    : vocab_(vocab), order_(order), seed_(seed), concentration_(concentration) {
  FG_CHECK(vocab >= 2 && vocab <= 65536, "markov: vocab must be in [2, 65536], got ", vocab);
  FG_CHECK(order >= 1, "markov: order must be >= 1, got ", order);
  FG_CHECK(std::isfinite(concentration) && concentration > 0,
           "markov: concentration must be a positive number, got ", concentration);
  num_contexts_ = 1;
  for (int k = 0; k < order; ++k) {
    num_contexts_ *= vocab;
    FG_CHECK(num_contexts_ <= kMaxContexts, "markov: vocab^order = ", vocab, "^", order,
             " contexts is more than the 2^20 this source supports");
  }

  // Row c ~ Dirichlet(concentration): normalized Gamma(a) draws, in log space
  // because the U^(1/a) factor underflows for small a.
  probs_.resize(static_cast<size_t>(num_contexts_ * vocab_));
  std::vector<double> log_w(static_cast<size_t>(vocab_));
  for (int64_t c = 0; c < num_contexts_; ++c) {
    double max_log = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < vocab_; ++j) {
      log_w[j] = log_gamma_variate(seed, c, j, concentration);
      max_log = std::max(max_log, log_w[j]);
    }
    double* row = &probs_[c * vocab_];
    double total = 0.0;
    for (int64_t j = 0; j < vocab_; ++j) total += row[j] = std::exp(log_w[j] - max_log);
    for (int64_t j = 0; j < vocab_; ++j) row[j] /= total;
  }

  compute_stationary();
  entropy_rate_ = 0.0;
  for (int64_t c = 0; c < num_contexts_; ++c) {
    double h = 0.0;
    for (int64_t j = 0; j < vocab_; ++j) {
      double p = probs_[c * vocab_ + j];
      if (p > 0) h -= p * std::log(p);
    }
    entropy_rate_ += stationary_[c] * h;
  }
}

void MarkovSource::compute_stationary() {
  // Power iteration on the lazy chain (I + P) / 2: same stationary distribution,
  // but aperiodic, so it converges even when P is a deterministic cycle. It stops
  // when an iteration moves pi by < 1e-13 in L1; a work budget turns a chain
  // that mixes too slowly into an error instead of a hang.
  const size_t n = static_cast<size_t>(num_contexts_);
  const int64_t stride = num_contexts_ / vocab_;  // context c = hi * stride + lo goes to lo * V + j
  const int64_t max_iterations =
      std::max<int64_t>(1000, kPowerWorkBudget / (num_contexts_ * vocab_));
  stationary_.assign(n, 1.0 / static_cast<double>(n));
  std::vector<double> next(n);
  for (int64_t it = 0; it < max_iterations; ++it) {
    for (size_t c = 0; c < n; ++c) next[c] = 0.5 * stationary_[c];
    for (int64_t hi = 0; hi < vocab_; ++hi) {
      for (int64_t lo = 0; lo < stride; ++lo) {
        const int64_t c = hi * stride + lo;
        const double half_mass = 0.5 * stationary_[c];
        const double* row = &probs_[c * vocab_];
        double* to = &next[lo * vocab_];
        for (int64_t j = 0; j < vocab_; ++j) to[j] += half_mass * row[j];
      }
    }
    double total = 0.0, change = 0.0;
    for (size_t c = 0; c < n; ++c) total += next[c];
    for (size_t c = 0; c < n; ++c) {
      next[c] /= total;  // keeps rounding from drifting the mass
      change += std::abs(next[c] - stationary_[c]);
    }
    stationary_.swap(next);
    if (change < kStationaryTol) return;
  }
  FG_THROW("markov: the stationary distribution did not converge in ", max_iterations,
           " iterations (vocab ", vocab_, ", order ", order_, ", concentration ", concentration_,
           "); the chain mixes too slowly, try a larger concentration or fewer contexts");
}

std::vector<int32_t> MarkovSource::generate(int64_t n, uint64_t seed) const {
  FG_CHECK(n >= 0, "markov: cannot generate ", n, " tokens");
  std::vector<int32_t> out(static_cast<size_t>(n));
  int64_t context =
      sample_index(stationary_.data(), num_contexts_, philox_uniform(seed, kStartOffset, 0));
  // The start context's digits, oldest first.
  int64_t digits = context;
  for (int k = order_ - 1; k >= 0; --k) {
    if (k < n) out[k] = static_cast<int32_t>(digits % vocab_);
    digits /= vocab_;
  }
  for (int64_t i = order_; i < n; ++i) {
    auto token = static_cast<int32_t>(
        sample_index(&probs_[context * vocab_], vocab_, philox_uniform(seed, kStepOffset, i)));
    out[i] = token;
    context = next_context(context, token);
  }
  return out;
}

std::string MarkovSource::describe() const {
  return str_cat("synthetic Markov corpus: vocab ", vocab_, ", order ", order_, " (", num_contexts_,
                 " contexts), seed ", seed_, ", concentration ", concentration_, "; entropy rate ",
                 entropy_rate_, " nats/token = the best possible loss (log ", vocab_, " = ",
                 std::log(static_cast<double>(vocab_)), ")");
}

}  // namespace fg::trainer
