// Communicator: the collectives data-parallel training needs, behind one
// interface. Implementations: threads in one process (thread_communicator.h,
// for tests and CPU runs) and NCCL, one process per GPU (nccl_communicator.h).
// The trainer sees only this interface.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace fg::dist {

enum class ReduceOp { Sum, Avg };
const char* reduce_op_name(ReduceOp op);

// A collective in flight (see Communicator::all_reduce_async).
class Work {
 public:
  virtual ~Work() = default;
  // After wait(), work the caller issues later sees the result: the thread
  // implementation has finished, NCCL orders the compute stream after the
  // collective without blocking the host. Throws fg::Error if it failed.
  virtual void wait() = 0;
};

// Every collective must be called by all ranks in the same order with tensors
// of the same size and dtype (contiguous, on device()). Any call may throw
// fg::Error naming the rank, the collective and the size, e.g.
// "rank 1: all_reduce of 4096 f32 elements timed out after 5 s waiting for rank 3";
// after a failure the communicator is unusable and every rank's next call throws.
class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Where its tensors live: the CPU (threads) or this rank's GPU (NCCL).
  virtual Device device() const = 0;
  // "threads", "nccl", for logs.
  virtual std::string name() const = 0;

  // In place: every rank's t becomes the sum (or mean) over ranks.
  virtual void all_reduce(const Tensor& t, ReduceOp op) = 0;
  // input: world_size * n elements, output: n elements; rank r receives chunk r
  // of the reduction. output may be input's chunk r (in place).
  virtual void reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op) = 0;
  // input: n elements, output: world_size * n; chunk r of output is rank r's
  // input. input may be output's chunk rank() (in place).
  virtual void all_gather(const Tensor& input, const Tensor& output) = 0;
  // In place: every rank's t becomes root's.
  virtual void broadcast(const Tensor& t, int root) = 0;
  virtual void barrier() = 0;

  // The same collectives, started without waiting for them, so they overlap
  // with compute; the tensors must stay alive and untouched until wait().
  // The defaults run synchronously.
  virtual std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op);
  virtual std::unique_ptr<Work> reduce_scatter_async(const Tensor& input, const Tensor& output,
                                                     ReduceOp op);
};

namespace detail {
// "rank 3" or "ranks 2, 3", for error messages.
std::string rank_list(const std::vector<int>& ranks);
// "all_reduce of 4096 f32 elements", for error messages.
std::string describe_collective(const char* collective, const Tensor& t);
// Checks the arguments every implementation shares (sizes, dtypes, contiguity, device).
void check_all_reduce(const Communicator& c, const Tensor& t);
void check_reduce_scatter(const Communicator& c, const Tensor& input, const Tensor& output);
void check_all_gather(const Communicator& c, const Tensor& input, const Tensor& output);
void check_broadcast(const Communicator& c, const Tensor& t, int root);
}  // namespace detail

}  // namespace fg::dist
