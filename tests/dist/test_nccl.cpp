// The NCCL communicator on one GPU: collectives of a world of one, training
// through it bit for bit like the non-distributed run, and an init that times
// out (a rank that never joins) instead of hanging. Skips without a GPU.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "checkpoint_diff.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/loop.h"

#ifdef FG_CUDA
#include "core/cuda_utils.h"
#include "dist/nccl_communicator.h"

using namespace fg;
using namespace fg::trainer;

namespace {

std::string temp_path(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("fg_nccl_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

std::shared_ptr<dist::NcclCommunicator> world_of_one() {
  return dist::NcclCommunicator::create(dist::ProcessGroup{0, 1, 0, "127.0.0.1", 29500, "test"},
                                        60);
}

TEST(Nccl, CollectivesOfAWorldOfOne) {
  FG_REQUIRE_GPU();
  auto comm = world_of_one();
  EXPECT_EQ(comm->world_size(), 1);
  EXPECT_TRUE(comm->device().is_cuda());
  Tensor x = Tensor::from_vector({1.5, -2.25, 3.0, 0.1}, {4}, DType::F32, comm->device());
  std::vector<double> want = x.to_vector();
  comm->all_reduce(x, dist::ReduceOp::Sum);
  comm->all_reduce(x, dist::ReduceOp::Avg);
  comm->all_reduce_async(x, dist::ReduceOp::Avg)->wait();
  comm->broadcast(x, 0);
  comm->barrier();
  EXPECT_EQ(x.to_vector(), want);
  Tensor out = Tensor::zeros({4}, DType::F32, comm->device());
  comm->reduce_scatter(x, out, dist::ReduceOp::Avg);
  EXPECT_EQ(out.to_vector(), want);
  Tensor gathered = Tensor::zeros({4}, DType::F32, comm->device());
  comm->all_gather(out, gathered);
  EXPECT_EQ(gathered.to_vector(), want);
  EXPECT_FG_ERROR(comm->all_reduce(Tensor::ones({2}), dist::ReduceOp::Sum),
                  "is on cpu but the nccl communicator works on cuda:");
}

// The reference is the non-distributed run, and its own rerun checks that the
// GPU run is bitwise reproducible: a replicated world of one must then match
// it bit for bit, and otherwise stay within f32 (bf16) tolerance.
TEST(Nccl, WorldOfOneTrainsLikeTheNonDistributedRun) {
  FG_REQUIRE_GPU();
  struct Case {
    DType dtype;
    int zero;
  };
  for (Case c : {Case{DType::F32, 0}, Case{DType::BF16, 0}, Case{DType::F32, 1}}) {
    TrainOptions o;
    o.model.vocab_size = 8;
    o.model.n_layer = 2;
    o.model.n_head = 4;
    o.model.n_kv_head = 2;
    o.model.d_model = 64;
    o.model.max_seq_len = 32;
    o.synth_tokens = 50000;
    o.device = Device::cuda(0);
    o.dtype = c.dtype;
    o.steps = 8;
    o.batch = 8;
    o.seq = 32;
    o.clip = 0.5;
    o.schedule = {3e-3, 3e-4, 2, 8};
    o.eval_every = 4;
    o.eval_batches = 2;
    o.progress = false;
    o.save = temp_path("single.h5");
    TrainResult single = train(o);
    o.save = temp_path("single_again.h5");
    TrainResult again = train(o);

    o.comm = world_of_one();
    o.zero = c.zero;
    o.bucket_mb = 0.02;  // several buckets, to overlap with backward
    o.save = temp_path("nccl.h5");
    TrainResult one = train(o);

    std::string what = str_cat(dtype_name(c.dtype), " zero ", c.zero);
    double noise = max_relative_difference(temp_path("single_again.h5"), temp_path("single.h5"));
    double diff = max_relative_difference(temp_path("nccl.h5"), temp_path("single.h5"));
    double loss_noise = 0, loss_diff = 0;
    for (size_t s = 0; s < single.losses.size(); ++s) {
      loss_noise =
          std::max(loss_noise, std::abs(again.losses[s] - single.losses[s]) / single.losses[s]);
      loss_diff =
          std::max(loss_diff, std::abs(one.losses[s] - single.losses[s]) / single.losses[s]);
    }
    std::printf(
        "%s: NCCL world of one vs non-distributed: max relative difference %.3g (losses %.3g); "
        "non-distributed rerun: %.3g (losses %.3g)\n",
        what.c_str(), diff, loss_diff, noise, loss_noise);
    // Replicated, the step rounds as the single-device one; ZeRO-1 clips in its
    // own pass by a norm summed over the shards, so it agrees to rounding only.
    if (noise == 0 && loss_noise == 0 && c.zero == 0) {
      EXPECT_EQ(diff, 0) << what;  // bit for bit
      EXPECT_EQ(one.losses, single.losses) << what;
    } else {
      double tol = c.dtype == DType::BF16 ? 1e-2 : 1e-5;
      EXPECT_LE(diff, tol) << what;
      EXPECT_LE(loss_diff, tol) << what;
    }
  }
}

TEST(Nccl, ARankThatNeverJoinsTimesInitOut) {
  FG_REQUIRE_GPU();
  auto t0 = std::chrono::steady_clock::now();
  // Rank 0 of 2 with a fresh id: rank 1 never comes.
  EXPECT_FG_ERROR(dist::NcclCommunicator(dist::NcclCommunicator::new_unique_id(), 0, 2, 0, 2.0),
                  "rank 0: NCCL init of a world of 2 ranks timed out after 2 s");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10);
}

// A collective that cannot finish (here the compute stream it is ordered
// after stalls for 3 s, standing in for a rank that stopped) is aborted by
// the watchdog after the timeout; this call and every later one fail.
TEST(NcclAbort, ACollectiveThatNeverFinishesIsAbortedAfterTheTimeout) {
  FG_REQUIRE_GPU();
  dist::NcclCommunicator comm(dist::NcclCommunicator::new_unique_id(), 0, 1, 0, 1.0);
  Tensor x = Tensor::ones({4}, DType::F32, comm.device());
  comm.all_reduce(x, dist::ReduceOp::Sum);  // healthy first
  FG_CUDA_CHECK(cudaLaunchHostFunc(
      cuda::stream(), [](void*) { std::this_thread::sleep_for(std::chrono::seconds(3)); },
      nullptr));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FG_ERROR(comm.all_reduce(x, dist::ReduceOp::Sum),
                  "rank 0: all_reduce of 4 f32 elements (sum) timed out after 1 s");
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(elapsed, 0.9);
  EXPECT_LT(elapsed, 2.5);
  EXPECT_FG_ERROR(comm.barrier(), "timed out after 1 s");  // the communicator stays failed
  FG_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
}

}  // namespace
#endif  // FG_CUDA
