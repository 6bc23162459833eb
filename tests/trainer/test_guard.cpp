// The non-finite guard: a step with a NaN gradient is skipped and counted, and
// too many in a row abort with a message instead of training on garbage.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"
#include "trainer/loop.h"

using namespace fg;
using namespace fg::trainer;

namespace {
TrainOptions short_run() {
  TrainOptions o;
  o.model.vocab_size = 8;
  o.model.n_layer = 1;
  o.model.d_model = 16;
  o.model.n_head = 2;
  o.model.max_seq_len = 16;
  o.synth_tokens = 20000;
  o.steps = 6;
  o.batch = 2;
  o.seq = 16;
  o.eval_every = 0;
  o.progress = false;
  return o;
}

// Poisons the first gradient on the calls listed (1-based).
std::function<void(const std::vector<Tensor>&)> nan_on(std::vector<int> calls) {
  auto count = std::make_shared<int>(0);
  return [count, calls](const std::vector<Tensor>& grads) {
    ++*count;
    for (int c : calls)
      if (c == *count) grads[0].fill_(NAN);
  };
}
}  // namespace

TEST(NonFiniteGuard, SkipsAndCountsBadSteps) {
  TrainOptions o = short_run();
  std::vector<double> clean = train(o).losses;
  o.gradient_hook = nan_on({2, 3});
  TrainResult r = train(o);
  EXPECT_EQ(r.skipped_steps, 2);
  ASSERT_EQ(r.losses.size(), clean.size());
  EXPECT_EQ(r.losses[1], clean[1]);  // the loss of a skipped step is still reported
  EXPECT_NE(r.losses[3], clean[3]);  // the parameters missed two updates
  for (double l : r.losses) EXPECT_TRUE(std::isfinite(l));
}

TEST(NonFiniteGuard, AbortsAfterTooManyInARow) {
  TrainOptions o = short_run();
  o.max_bad_steps = 3;
  o.gradient_hook = nan_on({1, 2, 3, 4, 5, 6});
  EXPECT_FG_ERROR(train(o), "training diverged: 3 non-finite steps in a row");
}
