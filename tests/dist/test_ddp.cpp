// Data-parallel training on CPU threads: N ranks with B/N sequences each reach
// the parameters one rank reaches with B (with and without ZeRO-1), bucketing
// and sharding change no bit, ranks skip non-finite steps together, only rank
// 0 writes, checkpoints resume on any world size, and a failing rank stops
// everyone within the timeout.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <stdexcept>
#include <thread>

#include "checkpoint_diff.h"
#include "dist/ddp.h"
#include "dist/thread_communicator.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/loop.h"

using namespace fg;
using namespace fg::trainer;

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kTimeout = 60;

std::string temp_path(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("fg_dist_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

// A tiny GPT on the synthetic corpus, a few steps: CI-sized.
TrainOptions tiny_run() {
  TrainOptions o;
  o.model.vocab_size = 8;
  o.model.n_layer = 2;
  o.model.n_head = 4;
  o.model.n_kv_head = 2;
  o.model.d_model = 32;
  o.model.max_seq_len = 16;
  o.synth_vocab = 8;
  o.synth_tokens = 20000;
  o.steps = 5;
  o.batch = 12;  // splits over 1, 2, 3 and 4 ranks
  o.seq = 16;
  o.schedule = {3e-3, 3e-4, 2, 5};
  o.clip = 0.5;  // small enough to clip: the clip factor must agree across ranks too
  o.eval_every = 5;
  o.eval_batches = 3;
  o.progress = false;
  o.seed = 11;
  return o;
}

struct RankRun {
  TrainResult result;
  std::string error;
};

// Trains on `world` threads; customize(rank, options) adjusts each rank's copy.
std::vector<RankRun> train_on_threads(
    int world, const TrainOptions& base, double timeout = kTimeout,
    const std::function<void(int, TrainOptions&)>& customize = {}) {
  std::vector<RankRun> runs(world);
  std::vector<std::string> errors =
      dist::run_on_threads(world, timeout, [&](const std::shared_ptr<dist::Communicator>& comm) {
        TrainOptions o = base;
        o.comm = comm;
        if (customize) customize(comm->rank(), o);
        runs[comm->rank()].result = train(o);
      });
  for (int r = 0; r < world; ++r) runs[r].error = errors[r];
  return runs;
}

void expect_ok(const std::vector<RankRun>& runs) {
  for (size_t r = 0; r < runs.size(); ++r) ASSERT_EQ(runs[r].error, "") << "rank " << r;
}

// The same checkpoints bit for bit (model and optimizer states).
bool same_bits(const std::string& a, const std::string& b) {
  return max_relative_difference(a, b) == 0;
}

struct Case {
  int world;
  int zero;
};

class DataParallel : public ::testing::TestWithParam<Case> {};

TEST_P(DataParallel, MatchesOneRankWithTheFullBatch) {
  const Case c = GetParam();
  TrainOptions o = tiny_run();
  o.save = temp_path("single.h5");
  TrainResult single = train(o);

  std::string path = temp_path(str_cat("dp_", c.world, "_zero", c.zero, ".h5"));
  o.save = path;
  o.zero = c.zero;
  auto runs = train_on_threads(c.world, o);
  expect_ok(runs);

  double diff = max_relative_difference(path, temp_path("single.h5"));
  std::printf(
      "N=%d zero %d vs one rank: max relative difference %.3g over parameters and Adam states\n",
      c.world, c.zero, diff);
  EXPECT_LE(diff, 1e-5);
  for (const RankRun& r : runs) {
    ASSERT_EQ(r.result.losses.size(), single.losses.size());
    for (size_t s = 0; s < single.losses.size(); ++s)
      EXPECT_NEAR(r.result.losses[s], single.losses[s], 1e-5 * std::abs(single.losses[s]))
          << "step " << s + 1;
    EXPECT_NEAR(r.result.final_val_loss, single.final_val_loss, 1e-5 * single.final_val_loss);
    EXPECT_EQ(r.result.losses, runs[0].result.losses);  // every rank reports the same global loss
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, DataParallel,
                         ::testing::Values(Case{2, 0}, Case{4, 0}, Case{2, 1}, Case{4, 1}),
                         [](const auto& info) {
                           return str_cat("N", info.param.world, "_zero", info.param.zero);
                         });

// The thread communicator adds in rank order, so a run is a pure function of
// its options and world size: bucketing, and sharding the optimizer, change no bit.
TEST(DataParallel, DeterministicWhateverTheBucketsOrTheSharding) {
  TrainOptions o = tiny_run();
  o.steps = 3;
  o.grad_accum = 2;  // micro-batches of 2 sequences per rank
  o.save = temp_path("det_ref.h5");
  expect_ok(train_on_threads(2, o));

  o.save = temp_path("det_again.h5");
  expect_ok(train_on_threads(2, o));
  EXPECT_TRUE(same_bits(temp_path("det_again.h5"), temp_path("det_ref.h5"))) << "rerun";

  o.bucket_mb = 1e-3;  // about 1 KB: every parameter in its own bucket
  o.save = temp_path("det_small_buckets.h5");
  expect_ok(train_on_threads(2, o));
  EXPECT_TRUE(same_bits(temp_path("det_small_buckets.h5"), temp_path("det_ref.h5")))
      << "1 KB buckets";

  // ZeRO-1 computes the norm from the ranks' pieces, so its clip factor may
  // differ in the last bit; without clipping the update is the same elementwise.
  o.clip = 0;
  o.bucket_mb = 25;
  o.save = temp_path("det_noclip.h5");
  expect_ok(train_on_threads(2, o));
  o.zero = 1;
  o.bucket_mb = 2e-3;
  o.save = temp_path("det_zero1.h5");
  expect_ok(train_on_threads(2, o));
  EXPECT_TRUE(same_bits(temp_path("det_zero1.h5"), temp_path("det_noclip.h5"))) << "zero 1";
}

// Buckets start from the gradient-ready hooks while backward still runs: when
// backward returns, every bucket's all-reduce has been issued.
class CountingCommunicator final : public dist::Communicator {
 public:
  explicit CountingCommunicator(std::shared_ptr<dist::Communicator> inner)
      : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  Device device() const override { return inner_->device(); }
  std::string name() const override { return "counting"; }
  void all_reduce(const Tensor& t, dist::ReduceOp op) override { inner_->all_reduce(t, op); }
  void reduce_scatter(const Tensor& i, const Tensor& o, dist::ReduceOp op) override {
    inner_->reduce_scatter(i, o, op);
  }
  void all_gather(const Tensor& i, const Tensor& o) override { inner_->all_gather(i, o); }
  void broadcast(const Tensor& t, int root) override { inner_->broadcast(t, root); }
  void barrier() override { inner_->barrier(); }
  std::unique_ptr<dist::Work> all_reduce_async(const Tensor& t, dist::ReduceOp op) override {
    ++started;
    return inner_->all_reduce_async(t, op);
  }
  int started = 0;

 private:
  std::shared_ptr<dist::Communicator> inner_;
};

TEST(DataParallel, BucketsStartDuringBackward) {
  TrainOptions o = tiny_run();
  GPTConfig cfg = o.model;
  auto errors =
      dist::run_on_threads(2, kTimeout, [&](const std::shared_ptr<dist::Communicator>& inner) {
        auto comm = std::make_shared<CountingCommunicator>(inner);
        GPT model(cfg, 3);
        dist::GradReducer reducer(model.params(), comm, {2048, false});
        ASSERT_GT(reducer.num_buckets(), 3);
        Tensor idx = Tensor::from_ints(std::vector<int32_t>(2 * 16, 1), {2, 16});
        reducer.arm();
        model.loss(idx, idx).backward();
        EXPECT_EQ(comm->started, reducer.num_buckets());  // all of them, before finish()
        reducer.finish();
        EXPECT_EQ(comm->started, reducer.num_buckets());
      });
  for (const std::string& e : errors) EXPECT_EQ(e, "");
}

TEST(DataParallel, NonFiniteGradientOnOneRankMakesEveryRankSkip) {
  for (int zero : {0, 1}) {
    TrainOptions o = tiny_run();
    o.zero = zero;
    auto runs = train_on_threads(3, o, kTimeout, [](int rank, TrainOptions& mine) {
      auto calls = std::make_shared<int>(0);
      mine.gradient_hook = [rank, calls](const std::vector<Tensor>& grads) {
        if (rank != 1 || ++*calls != 2) return;  // step 2 on rank 1 only
        for (const Tensor& g : grads)
          if (g.defined()) return g.fill_(NAN);
      };
    });
    expect_ok(runs);
    for (int r = 0; r < 3; ++r) {
      EXPECT_EQ(runs[r].result.skipped_steps, 1) << "rank " << r << " zero " << zero;
      EXPECT_EQ(runs[r].result.losses, runs[0].result.losses) << "rank " << r;
      EXPECT_TRUE(std::isfinite(runs[r].result.final_val_loss)) << "rank " << r;
    }
  }
}

TEST(DataParallel, OnlyRankZeroWritesCheckpointsAndLogs) {
  TrainOptions o = tiny_run();
  o.save_every = 2;
  auto runs = train_on_threads(3, o, kTimeout, [](int rank, TrainOptions& mine) {
    mine.save = temp_path(str_cat("rank", rank, ".h5"));
    mine.log = temp_path(str_cat("rank", rank, ".jsonl"));
  });
  expect_ok(runs);
  EXPECT_TRUE(std::filesystem::exists(temp_path("rank0.h5")));
  EXPECT_TRUE(std::filesystem::exists(temp_path("rank0.jsonl")));
  for (int r : {1, 2}) {
    EXPECT_FALSE(std::filesystem::exists(temp_path(str_cat("rank", r, ".h5")))) << "rank " << r;
    EXPECT_FALSE(std::filesystem::exists(temp_path(str_cat("rank", r, ".jsonl")))) << "rank " << r;
  }
  std::ifstream log(temp_path("rank0.jsonl"));
  int lines = 0;
  for (std::string line; std::getline(log, line);) ++lines;
  EXPECT_EQ(lines, o.steps);
}

// A checkpoint holds full optimizer states: written by 2 ranks under ZeRO-1,
// resumed by 3 ranks without it, it ends where one rank ends.
TEST(DataParallel, CheckpointsResumeOnAnyWorldSize) {
  TrainOptions o = tiny_run();
  o.steps = 6;
  o.schedule = {3e-3, 3e-4, 2, 6};
  o.save = temp_path("straight.h5");
  train(o);

  TrainOptions first = o;
  first.steps = 3;
  first.zero = 1;
  first.save = temp_path("half.h5");
  expect_ok(train_on_threads(2, first));
  TrainOptions second = o;
  second.resume = temp_path("half.h5");
  second.save = temp_path("resumed.h5");
  expect_ok(train_on_threads(3, second));
  double diff = max_relative_difference(temp_path("resumed.h5"), temp_path("straight.h5"));
  std::printf("2 ranks (zero 1) then 3 ranks vs one rank: max relative difference %.3g\n", diff);
  EXPECT_LE(diff, 1e-5);
  EXPECT_EQ(load_checkpoint(temp_path("resumed.h5")).step, 6);
}

TEST(DataParallel, BatchMustSplitEvenly) {
  TrainOptions o = tiny_run();
  o.batch = 6;
  auto runs = train_on_threads(4, o, 5.0);
  EXPECT_NE(
      runs[0].error.find("--batch (6) must split into --grad-accum (1) micro-batches of equal "
                         "slices for each of the 4 ranks"),
      std::string::npos)
      << runs[0].error;
  o = tiny_run();
  o.zero = 1;
  EXPECT_FG_ERROR(train(o), "--zero 1 shards the optimizer states across ranks");
}

// A rank that throws mid-training (here: in its gradient hook at step 2)
// makes every other rank fail too, within the timeout, naming it.
TEST(DataParallel, ARankThatThrowsStopsTraining) {
  for (int zero : {0, 1}) {
    TrainOptions o = tiny_run();
    o.zero = zero;
    o.steps = 50;
    auto t0 = Clock::now();
    auto runs = train_on_threads(3, o, 1.5, [](int rank, TrainOptions& mine) {
      auto calls = std::make_shared<int>(0);
      mine.gradient_hook = [rank, calls](const std::vector<Tensor>&) {
        if (rank == 2 && ++*calls == 2) throw std::runtime_error("disk full (simulated)");
      };
    });
    double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    EXPECT_LT(elapsed, 10) << "zero " << zero;
    EXPECT_EQ(runs[2].error, "disk full (simulated)");
    for (int r : {0, 1})
      EXPECT_NE(runs[r].error.find(str_cat("rank ", r, ": ")), std::string::npos) << runs[r].error;
    for (int r : {0, 1})
      EXPECT_NE(runs[r].error.find("rank 2 failed: disk full"), std::string::npos) << runs[r].error;
  }
}

// A rank that never shows up: the others time out in their first collective.
TEST(DataParallel, ARankThatNeverJoinsTimesTrainingOut) {
  TrainOptions o = tiny_run();
  auto world = std::make_shared<dist::ThreadWorld>(3, 1.0);
  std::vector<std::string> errors(2);
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      TrainOptions mine = o;
      mine.comm = std::make_shared<dist::ThreadCommunicator>(world, r);
      try {
        train(mine);
      } catch (const Error& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 5);
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(errors[r].find(str_cat("rank ", r, ": ")), std::string::npos) << errors[r];
    EXPECT_NE(errors[r].find("timed out after 1 s waiting for rank 2"), std::string::npos)
        << errors[r];
  }
}

}  // namespace
