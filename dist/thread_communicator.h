// The in-process Communicator: N ranks are N threads sharing one ThreadWorld.
// Reductions add the ranks' values in rank order (in f64), so results are
// bitwise reproducible. A rank that fails (run_on_threads aborts the world for
// it) or never arrives makes every other rank's collective throw within the
// timeout: nothing hangs.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"

namespace fg::dist {

class ThreadWorld {
 public:
  // A collective that waits longer than timeout_s for the other ranks fails.
  ThreadWorld(int world_size, double timeout_s);
  ~ThreadWorld();
  ThreadWorld(const ThreadWorld&) = delete;
  ThreadWorld& operator=(const ThreadWorld&) = delete;

  int world_size() const;
  double timeout() const;
  // Marks the world failed because of `rank`: every collective in progress or
  // to come throws, naming it and the reason.
  void abort(int rank, const std::string& reason);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  friend class ThreadCommunicator;
};

// One rank's view of a ThreadWorld; CPU tensors, f32 or f64.
class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<ThreadWorld> world, int rank);

  int rank() const override { return rank_; }
  int world_size() const override;
  Device device() const override { return Device::cpu(); }
  std::string name() const override { return "threads"; }

  void all_reduce(const Tensor& t, ReduceOp op) override;
  void reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op) override;
  void all_gather(const Tensor& input, const Tensor& output) override;
  void broadcast(const Tensor& t, int root) override;
  void barrier() override;

 private:
  std::shared_ptr<ThreadWorld> world_;
  int rank_;
};

// Runs fn(comm) for ranks 0..world_size-1, each on its own thread with its own
// ThreadCommunicator, and joins them. A rank that throws aborts the world, so
// the others stop within timeout_s. Returns each rank's error message, empty
// for a rank that finished.
std::vector<std::string> run_on_threads(
    int world_size, double timeout_s,
    const std::function<void(const std::shared_ptr<Communicator>&)>& fn);

}  // namespace fg::dist
