// The thread communicator: every collective for 2, 3 and 4 ranks (exact
// values, in place and out of place, f32 and f64), bitwise agreement across
// ranks, and failures that stop every rank within the timeout.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "dist/ddp.h"
#include "dist/thread_communicator.h"
#include "test_util.h"

using namespace fg;
using namespace fg::dist;

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kTimeout = 30;  // generous: only the failure tests rely on it firing

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Rank r's i-th value: distinct per rank and element, not exactly representable sums.
double value(int rank, int64_t i) {
  return 0.1 * (rank + 1) + 0.37 * static_cast<double>(i) - 1.3;
}

Tensor rank_tensor(int rank, int64_t n, DType dtype) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = value(rank, i);
  return Tensor::from_vector(v, {n}, dtype);
}

// The expected reduction: in f64, in rank order, rounded once.
std::vector<double> expected_sum(int world, int64_t begin, int64_t n, DType dtype, bool avg) {
  std::vector<double> out(n);
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int r = 0; r < world; ++r)
      s += dtype == DType::F32 ? static_cast<double>(static_cast<float>(value(r, begin + i)))
                               : value(r, begin + i);
    if (avg) s /= world;
    out[i] = dtype == DType::F32 ? static_cast<double>(static_cast<float>(s)) : s;
  }
  return out;
}

void expect_all_ok(const std::vector<std::string>& errors) {
  for (size_t r = 0; r < errors.size(); ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

class Collectives : public ::testing::TestWithParam<int> {};

TEST_P(Collectives, AllReduceSumAndAvgAreExactAndAgreeBitwise) {
  const int world = GetParam();
  const int64_t n = 37;
  for (DType dtype : {DType::F32, DType::F64}) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg}) {
      std::vector<Tensor> results(world);
      expect_all_ok(run_on_threads(world, kTimeout, [&](const std::shared_ptr<Communicator>& c) {
        Tensor t = rank_tensor(c->rank(), n, dtype);
        c->all_reduce(t, op);
        results[c->rank()] = t;
      }));
      std::vector<double> want = expected_sum(world, 0, n, dtype, op == ReduceOp::Avg);
      for (int r = 0; r < world; ++r) {
        EXPECT_EQ(results[r].to_vector(), want) << "rank " << r << " " << dtype_name(dtype);
        EXPECT_EQ(std::memcmp(results[r].raw_data(), results[0].raw_data(), results[0].nbytes()),
                  0);
      }
    }
  }
}

TEST_P(Collectives, ReduceScatterGivesEachRankItsChunk) {
  const int world = GetParam();
  const int64_t chunk = 5;
  for (bool in_place : {false, true}) {
    std::vector<Tensor> results(world);
    expect_all_ok(run_on_threads(world, kTimeout, [&](const std::shared_ptr<Communicator>& c) {
      Tensor in = rank_tensor(c->rank(), chunk * world, DType::F32);
      Tensor out = in_place ? in.slice(0, c->rank() * chunk, (c->rank() + 1) * chunk)
                            : Tensor::zeros({chunk});
      c->reduce_scatter(in, out, ReduceOp::Avg);
      results[c->rank()] = out.clone();
    }));
    for (int r = 0; r < world; ++r)
      EXPECT_EQ(results[r].to_vector(), expected_sum(world, r * chunk, chunk, DType::F32, true))
          << "rank " << r << (in_place ? " in place" : "");
  }
}

TEST_P(Collectives, AllGatherConcatenatesInRankOrder) {
  const int world = GetParam();
  const int64_t chunk = 3;
  for (bool in_place : {false, true}) {
    std::vector<Tensor> results(world);
    expect_all_ok(run_on_threads(world, kTimeout, [&](const std::shared_ptr<Communicator>& c) {
      Tensor out = Tensor::zeros({chunk * world}, DType::F64);
      Tensor mine = rank_tensor(c->rank(), chunk, DType::F64);
      Tensor in = in_place ? out.slice(0, c->rank() * chunk, (c->rank() + 1) * chunk) : mine;
      if (in_place) in.copy_(mine);
      c->all_gather(in, out);
      results[c->rank()] = out;
    }));
    std::vector<double> want;
    for (int r = 0; r < world; ++r)
      for (int64_t i = 0; i < chunk; ++i) want.push_back(value(r, i));
    for (int r = 0; r < world; ++r) EXPECT_EQ(results[r].to_vector(), want) << "rank " << r;
  }
}

TEST_P(Collectives, BroadcastAndBarrier) {
  const int world = GetParam();
  const int root = world - 1;
  std::vector<Tensor> results(world);
  expect_all_ok(run_on_threads(world, kTimeout, [&](const std::shared_ptr<Communicator>& c) {
    Tensor t = rank_tensor(c->rank(), 11, DType::F32);
    c->barrier();
    c->broadcast(t, root);
    c->barrier();
    results[c->rank()] = t;
  }));
  for (int r = 0; r < world; ++r)
    EXPECT_EQ(results[r].to_vector(), rank_tensor(root, 11, DType::F32).to_vector())
        << "rank " << r;
}

INSTANTIATE_TEST_SUITE_P(Ranks, Collectives, ::testing::Values(2, 3, 4),
                         [](const auto& info) { return "N" + std::to_string(info.param); });

TEST(ThreadCommunicator, ARankThatThrowsStopsEveryRankAtOnce) {
  auto t0 = Clock::now();
  auto errors = run_on_threads(3, 2.0, [](const std::shared_ptr<Communicator>& c) {
    Tensor t = Tensor::ones({4096});
    c->all_reduce(t, ReduceOp::Sum);
    if (c->rank() == 1) throw std::runtime_error("out of memory (simulated)");
    for (int i = 0; i < 100; ++i) c->all_reduce(t, ReduceOp::Sum);
  });
  EXPECT_LT(seconds_since(t0), 1.5);  // the abort, not the timeout, ends the wait
  EXPECT_EQ(errors[1], "out of memory (simulated)");
  for (int r : {0, 2}) {
    EXPECT_NE(errors[r].find(str_cat(
                  "rank ", r,
                  ": all_reduce of 4096 f32 elements (sum) failed: rank 1 failed: out of memory")),
              std::string::npos)
        << errors[r];
  }
}

TEST(ThreadCommunicator, ARankThatNeverJoinsTimesEveryRankOut) {
  auto world = std::make_shared<ThreadWorld>(3, 1.0);
  std::vector<std::string> errors(2);
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {  // rank 2 is never started
    threads.emplace_back([&, r] {
      ThreadCommunicator c(world, r);
      Tensor t = Tensor::ones({4096});
      try {
        c.all_reduce(t, ReduceOp::Avg);
      } catch (const Error& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  double elapsed = seconds_since(t0);
  EXPECT_GE(elapsed, 0.9);
  EXPECT_LT(elapsed, 2.0);
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(errors[r].find(
                  "all_reduce of 4096 f32 elements (avg) timed out after 1 s waiting for rank 2"),
              std::string::npos)
        << errors[r];
    EXPECT_NE(errors[r].find(str_cat("rank ", r, ": ")), std::string::npos) << errors[r];
  }
}

TEST(ThreadCommunicator, MismatchedCollectivesFailInsteadOfHanging) {
  auto errors = run_on_threads(2, 5.0, [](const std::shared_ptr<Communicator>& c) {
    Tensor t = Tensor::ones({c->rank() == 0 ? 8 : 9});
    c->all_reduce(t, ReduceOp::Sum);
  });
  EXPECT_NE(
      errors[0].find(
          "rank 0: all_reduce of 8 f32 elements (sum) does not match rank 1's all_reduce of 9"),
      std::string::npos)
      << errors[0];
  EXPECT_NE(errors[1].find("does not match"), std::string::npos) << errors[1];
}

TEST(ThreadCommunicator, BadArgumentsAreClearErrors) {
  auto world = std::make_shared<ThreadWorld>(2, 1.0);
  ThreadCommunicator c(world, 0);
  EXPECT_FG_ERROR(c.all_reduce(Tensor::ones({4}, DType::I32), ReduceOp::Sum),
                  "collectives take f32 or f64");
  EXPECT_FG_ERROR(c.reduce_scatter(Tensor::ones({5}), Tensor::ones({2}), ReduceOp::Sum),
                  "must hold world size (2) times the elements of output");
  EXPECT_FG_ERROR(c.broadcast(Tensor::ones({2}), 2),
                  "broadcast from rank 2 but the world has ranks 0..1");
  EXPECT_FG_ERROR(ThreadCommunicator(world, 2), "rank 2 is outside the world of 2 ranks");
}

// The reducer on its own: mean gradients for any bucket size, and ZeRO-1
// pieces that tile every parameter exactly once across the ranks. (The
// trainer tests run it inside real backward passes.)
TEST(GradReducer, BucketsAverageGradientsAndShardsTileTheParameters) {
  const int world = 3;
  const std::vector<Shape> shapes = {{7, 5}, {11}, {4, 4}, {3}};
  for (int64_t bucket_bytes : {int64_t{4}, int64_t{100}, int64_t{1} << 20}) {
    for (bool shard : {false, true}) {
      std::vector<std::vector<int64_t>> owner_count(shapes.size());
      std::vector<std::vector<Tensor>> grads(world);
      std::mutex mutex;
      expect_all_ok(run_on_threads(world, kTimeout, [&](const std::shared_ptr<Communicator>& c) {
        std::vector<ag::Variable> params;
        for (const Shape& s : shapes) params.emplace_back(Tensor::zeros(s), true);
        GradReducer reducer(params, c, {bucket_bytes, shard});
        reducer.arm();
        // No backward ran, so finish() starts every bucket itself.
        for (size_t i = 0; i < params.size(); ++i) {
          std::vector<double> g(shape_numel(shapes[i]));
          for (size_t k = 0; k < g.size(); ++k)
            g[k] = value(c->rank(), static_cast<int64_t>(k + 10 * i));
          params[i].set_grad(Tensor::from_vector(g, shapes[i]));
        }
        reducer.finish();
        std::lock_guard<std::mutex> lock(mutex);
        if (shard) {
          for (const auto& p : reducer.pieces()) {
            auto& counts = owner_count[p.param];
            counts.resize(shape_numel(shapes[p.param]), 0);
            for (int64_t k = p.offset; k < p.offset + p.numel; ++k) counts[k] += 1;
          }
          std::vector<Tensor> shards = reducer.gradient_shards();
          for (size_t i = 0; i < shards.size(); ++i) grads[c->rank()].push_back(shards[i]);
        } else {
          for (const auto& p : params) grads[c->rank()].push_back(p.grad());
        }
      }));
      if (!shard) {
        for (int r = 0; r < world; ++r)
          for (size_t i = 0; i < shapes.size(); ++i)
            EXPECT_EQ(grads[r][i].to_vector(),
                      expected_sum(world, 10 * static_cast<int64_t>(i), shape_numel(shapes[i]),
                                   DType::F32, true))
                << "param " << i << " rank " << r << " bucket " << bucket_bytes;
      } else {
        for (size_t i = 0; i < shapes.size(); ++i)
          for (int64_t k = 0; k < shape_numel(shapes[i]); ++k)
            EXPECT_EQ(owner_count[i].at(k), 1) << "param " << i << " element " << k;
      }
    }
  }
}

}  // namespace
