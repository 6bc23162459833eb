// The NCCL Communicator: one process per GPU. Collectives run on the
// communicator's own stream, ordered after the work already queued on the
// compute stream (fg::cuda::stream()) with events. The communicator is
// non-blocking and a watchdog thread checks every collective in flight: on a
// timeout or an asynchronous NCCL error it aborts the communicator (so no
// kernel waits forever) and the next call on this rank throws, naming the
// rank, the collective and its size. CUDA builds only.
#pragma once

#ifdef FG_CUDA
#include <cstdint>
#include <memory>
#include <vector>

#include "dist/communicator.h"
#include "dist/rendezvous.h"

namespace fg::dist {

class NcclCommunicator final : public Communicator {
 public:
  // A fresh NCCL unique id: rank 0 makes one and hands it to every rank.
  static std::vector<uint8_t> new_unique_id();

  // Joins the communicator `unique_id` as `rank` of `world_size` on CUDA device
  // `device` (made current); throws if the others do not join within timeout_s.
  // Every later collective that takes longer than timeout_s fails the same way.
  NcclCommunicator(const std::vector<uint8_t>& unique_id, int rank, int world_size, int device,
                   double timeout_s);
  // The usual way in: rank 0's unique id goes to every rank over TCP
  // (share_from_rank0), and each joins on GPU local_rank (or the only visible one).
  static std::shared_ptr<NcclCommunicator> create(const ProcessGroup& pg, double timeout_s);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override;
  int world_size() const override;
  Device device() const override;
  std::string name() const override { return "nccl"; }

  // The synchronous collectives return once the result is in place (the host waits).
  void all_reduce(const Tensor& t, ReduceOp op) override;
  void reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op) override;
  void all_gather(const Tensor& input, const Tensor& output) override;
  void broadcast(const Tensor& t, int root) override;
  void barrier() override;
  // These return at once; wait() makes the compute stream wait for them.
  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) override;
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& input, const Tensor& output,
                                             ReduceOp op) override;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace fg::dist
#endif
