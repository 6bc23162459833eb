// End-to-end training on the CPU: convergence to the synthetic source's exact
// entropy rate, a broken gradient that misses it, bit-exact resume, and
// recomputation that changes nothing but memory.
#include <gtest/gtest.h>

#include <filesystem>

#include "test_util.h"
#include "trainer/loop.h"

using namespace fg;
using namespace fg::trainer;

namespace {

std::string temp_path(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("fg_train_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

// A tiny GPT on an order-2 Markov source over 8 symbols: small enough for CI.
TrainOptions tiny_run() {
  TrainOptions o;
  o.model.vocab_size = 8;
  o.model.n_layer = 2;
  o.model.n_head = 4;
  o.model.d_model = 32;
  o.model.max_seq_len = 32;
  o.synth_vocab = 8;
  o.synth_order = 2;
  o.synth_tokens = 1000000;  // a 100k-token val split: sampling noise ~0.005
  o.steps = 400;
  o.batch = 16;
  o.seq = 32;
  o.schedule = {3e-3, 3e-4, 30, 400};
  o.weight_decay = 0.0;
  o.eval_every = 400;
  o.eval_batches = 64;
  o.progress = false;
  o.seed = 5;
  return o;
}

}  // namespace

TEST(Train, SyntheticRunReachesTheEntropyRate) {
  TrainResult r = train(tiny_run());
  std::printf("val loss %.4f, entropy rate %.4f, gap %.4f nats\n", r.final_val_loss,
              r.entropy_rate, r.final_val_loss - r.entropy_rate);
  ASSERT_GT(r.entropy_rate, 0.5);
  EXPECT_LT(r.final_val_loss - r.entropy_rate, 0.05)
      << "val " << r.final_val_loss << " vs entropy rate " << r.entropy_rate;
  EXPECT_GT(r.final_val_loss - r.entropy_rate, -0.05);  // better than possible means a leak
}

TEST(Train, BrokenGradientMissesTheEntropyRate) {
  TrainOptions o = tiny_run();
  // Deliberately wrong: the QKV projections get a zero gradient, so attention never
  // learns to read the previous tokens an order-2 source depends on.
  o.gradient_hook = [](const std::vector<Tensor>& grads) {
    for (const Tensor& g : grads)
      if (g.dim() == 2 && g.size(0) == 3 * 32) g.copy_(Tensor::zeros(g.shape()).to(g.device()));
  };
  TrainResult r = train(o);
  std::printf("broken QKV gradient: val loss %.4f, entropy rate %.4f, gap %.4f nats\n",
              r.final_val_loss, r.entropy_rate, r.final_val_loss - r.entropy_rate);
  EXPECT_GT(r.final_val_loss - r.entropy_rate, 0.05)
      << "val " << r.final_val_loss << " vs entropy rate " << r.entropy_rate;
}

TEST(Train, ResumeIsBitExact) {
  TrainOptions o = tiny_run();
  o.steps = 12;
  o.schedule = {3e-3, 3e-4, 4, 12};
  o.eval_every = 0;
  TrainResult full = train(o);

  std::string ck = temp_path("resume.h5");
  TrainOptions first = o;
  first.steps = 5;  // stop early, same schedule
  first.save = ck;
  TrainResult a = train(first);
  TrainOptions second = o;
  second.resume = ck;
  TrainResult b = train(second);

  std::vector<double> joined = a.losses;
  joined.insert(joined.end(), b.losses.begin(), b.losses.end());
  ASSERT_EQ(joined.size(), full.losses.size());
  for (size_t i = 0; i < joined.size(); ++i)
    EXPECT_EQ(joined[i], full.losses[i]) << "step " << i + 1;  // bit for bit
}

TEST(Train, RecomputeChangesNothingButMemory) {
  TrainOptions o = tiny_run();
  o.steps = 4;
  o.eval_every = 0;
  o.model.n_kv_head = 2;
  o.model.qkv_bias = true;
  o.model.rotary_dim = 4;
  TrainResult base = train(o);
  // The memory summary counts what lives: grads and the two AdamW states are
  // the size of the parameters, and a step's activations come on top.
  const MemorySummary& m = base.memory;
  EXPECT_EQ(m.grads, m.params);
  EXPECT_EQ(m.optimizer, 2 * m.params);
  EXPECT_GT(m.activations, 0);
  EXPECT_GE(m.peak, m.params + m.grads + m.optimizer + m.activations);
  int64_t previous = m.activations;
  for (Recompute r : {Recompute::Attn, Recompute::Full}) {
    o.recompute = r;
    TrainResult t = train(o);
    EXPECT_EQ(t.losses, base.losses);
    EXPECT_LT(t.memory.activations, previous) << "recompute " << static_cast<int>(r);
    previous = t.memory.activations;
  }
}

TEST(Train, BadOptionsNameTheFlag) {
  TrainOptions o = tiny_run();
  o.seq = 64;
  EXPECT_FG_ERROR(train(o), "--seq (64) is longer than --max-seq-len (32)");
  o = tiny_run();
  o.grad_accum = 3;
  EXPECT_FG_ERROR(train(o), "--grad-accum (3) must divide --batch (16)");
  o = tiny_run();
  o.model.n_head = 5;
  EXPECT_FG_ERROR(train(o), "d_model (32) must be a positive multiple of n_head (5)");
  o = tiny_run();
  o.data = temp_path("missing.txt");
  EXPECT_FG_ERROR(train(o), "missing.txt");
}

TEST(Train, ResumeRejectsADifferentConfig) {
  TrainOptions o = tiny_run();
  o.steps = 0;
  o.save = temp_path("cfg.h5");
  train(o);
  o.save.clear();
  o.resume = temp_path("cfg.h5");
  o.steps = 2;
  o.model.d_model = 64;
  EXPECT_FG_ERROR(train(o), "checkpoint has d_model = 32 but the run asks for 64");
}
