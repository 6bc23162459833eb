// The synthetic Markov corpus: exact entropy rate vs an empirical estimate,
// the stationary distribution, determinism and argument checks.
#include <cmath>
#include <numeric>

#include "test_util.h"
#include "trainer/markov.h"

using fg::trainer::MarkovSource;

namespace {

// -mean log P(next | context) over a generated sequence: the empirical entropy rate.
double empirical_entropy(const MarkovSource& src, const std::vector<int32_t>& seq) {
  int64_t context = 0;
  for (int k = 0; k < src.order(); ++k) context = src.next_context(context, seq[k]);
  double nll = 0.0;
  for (size_t i = src.order(); i < seq.size(); ++i) {
    nll -= std::log(src.probability(context, seq[i]));
    context = src.next_context(context, seq[i]);
  }
  return nll / static_cast<double>(seq.size() - src.order());
}

}  // namespace

TEST(Markov, RowsAndStationaryAreDistributions) {
  MarkovSource src(8, 2, 1234);
  ASSERT_EQ(src.num_contexts(), 64);
  for (int64_t c = 0; c < src.num_contexts(); ++c) {
    double row = 0.0;
    for (int32_t j = 0; j < 8; ++j) row += src.probability(c, j);
    EXPECT_NEAR(row, 1.0, 1e-12);
  }
  const std::vector<double>& pi = src.stationary();
  EXPECT_NEAR(std::accumulate(pi.begin(), pi.end(), 0.0), 1.0, 1e-12);
  // pi is a fixed point: (pi P)(c') = pi(c').
  std::vector<double> pi_p(pi.size(), 0.0);
  for (int64_t c = 0; c < src.num_contexts(); ++c)
    for (int32_t j = 0; j < 8; ++j) pi_p[src.next_context(c, j)] += pi[c] * src.probability(c, j);
  for (size_t c = 0; c < pi.size(); ++c) EXPECT_NEAR(pi_p[c], pi[c], 1e-12);
}

TEST(Markov, EntropyRateIsLowAndMatchesEmpirical) {
  MarkovSource src(8, 2, 1234);
  EXPECT_GT(src.entropy_rate(), 0.1);
  EXPECT_LT(src.entropy_rate(), 0.8 * std::log(8.0));  // learnable: well below uniform
  std::vector<int32_t> seq = src.generate(2'000'000, 99);
  EXPECT_NEAR(empirical_entropy(src, seq), src.entropy_rate(), 0.01);
  EXPECT_NE(src.describe().find("entropy rate"), std::string::npos);
}

TEST(Markov, HigherOrderMatchesEmpirical) {
  MarkovSource src(4, 3, 7, 0.5);
  std::vector<int32_t> seq = src.generate(1'000'000, 5);
  EXPECT_NEAR(empirical_entropy(src, seq), src.entropy_rate(), 0.01);
}

TEST(Markov, DirichletOneMatchesItsExpectedEntropy) {
  // E[H] of a Dirichlet(1) row over V symbols is H_V - 1 (H_V harmonic); the
  // pi-weighted mean over 512 rows sits close to it when the sampler is right.
  MarkovSource src(8, 3, 11, 1.0);
  double expected = -1.0;
  for (int k = 1; k <= 8; ++k) expected += 1.0 / k;
  EXPECT_NEAR(src.entropy_rate(), expected, 0.05);
  // A large concentration makes rows nearly uniform.
  EXPECT_NEAR(MarkovSource(8, 2, 11, 1e4).entropy_rate(), std::log(8.0), 1e-3);
}

TEST(Markov, TinyConcentrationIsDeterministic) {
  MarkovSource src(8, 2, 3, 1e-6);
  EXPECT_NEAR(src.entropy_rate(), 0.0, 1e-9);
  const std::vector<double>& pi = src.stationary();
  EXPECT_NEAR(std::accumulate(pi.begin(), pi.end(), 0.0), 1.0, 1e-12);
  std::vector<int32_t> seq = src.generate(10'000, 1);
  EXPECT_NEAR(empirical_entropy(src, seq), 0.0, 1e-9);
  // The chain settles on a cycle: the same context always emits the same token.
  std::vector<int32_t> next_of(64, -1);
  int64_t context = seq[0] * 8 + seq[1];
  for (size_t i = 2; i < seq.size(); ++i) {
    if (next_of[context] >= 0) EXPECT_EQ(next_of[context], seq[i]);
    next_of[context] = seq[i];
    context = src.next_context(context, seq[i]);
  }
}

TEST(Markov, Deterministic) {
  MarkovSource a(8, 2, 42), b(8, 2, 42), c(8, 2, 43);
  EXPECT_EQ(a.entropy_rate(), b.entropy_rate());
  EXPECT_NE(a.entropy_rate(), c.entropy_rate());
  EXPECT_EQ(a.generate(1000, 5), b.generate(1000, 5));
  EXPECT_NE(a.generate(1000, 5), a.generate(1000, 6));
  // A shorter draw is a prefix of a longer one.
  std::vector<int32_t> long_seq = a.generate(1000, 5), short_seq = a.generate(10, 5);
  EXPECT_TRUE(std::equal(short_seq.begin(), short_seq.end(), long_seq.begin()));
  EXPECT_EQ(a.generate(1, 5).size(), 1u);
  EXPECT_TRUE(a.generate(0, 5).empty());
  for (int32_t t : long_seq) EXPECT_TRUE(t >= 0 && t < 8);
}

TEST(Markov, ArgumentErrors) {
  EXPECT_FG_ERROR(MarkovSource(1, 2, 0), "vocab must be in [2, 65536]");
  EXPECT_FG_ERROR(MarkovSource(8, 0, 0), "order must be >= 1");
  EXPECT_FG_ERROR(MarkovSource(8, 7, 0), "vocab^order = 8^7");
  EXPECT_FG_ERROR(MarkovSource(8, 2, 0, 0.0), "concentration must be a positive number");
  EXPECT_FG_ERROR(MarkovSource(8, 2, 0).generate(-1, 0), "cannot generate -1 tokens");
}
