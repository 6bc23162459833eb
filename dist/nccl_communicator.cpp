// NcclCommunicator. Every collective: record an event on the compute stream,
// make the communicator's stream wait for it, enqueue the NCCL call there,
// record a `done` event and hand it to the watchdog. The watchdog thread pops
// finished collectives, polls ncclCommGetAsyncError and aborts the
// communicator when one fails or outlives the timeout; every later call on
// this rank then throws that first failure.
#ifdef FG_CUDA
#include "dist/nccl_communicator.h"

#include <nccl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "core/cuda_utils.h"
#include "core/device.h"

#define FG_NCCL_CHECK(expr)                                                           \
  do {                                                                                \
    ncclResult_t fg_nccl_ = (expr);                                                   \
    if (fg_nccl_ != ncclSuccess && fg_nccl_ != ncclInProgress)                        \
      ::fg::throw_error(__FILE__, __LINE__, #expr,                                    \
                        ::fg::str_cat("NCCL error: ", ncclGetErrorString(fg_nccl_))); \
  } while (0)

namespace fg::dist {

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kWatchdogPeriod = std::chrono::milliseconds(20);
constexpr auto kPollPeriod = std::chrono::microseconds(20);

Clock::time_point after(double seconds) {
  return Clock::now() +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// Owns a CUDA event (no timing: cheaper to record and query).
class CudaEvent {
 public:
  CudaEvent() { FG_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  ~CudaEvent() {
    if (event_) cudaEventDestroy(event_);
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// Owns the communicator's stream: non-blocking, at the highest priority so
// gradient reductions are not starved by the backward kernels they overlap.
class CudaStream {
 public:
  CudaStream() {
    int least = 0, greatest = 0;
    FG_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    FG_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
  }
  ~CudaStream() {
    if (stream_) cudaStreamDestroy(stream_);
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

ncclDataType_t nccl_dtype(DType d) {
  return d == DType::F64 ? ncclFloat64 : ncclFloat32;
}
ncclRedOp_t nccl_op(ReduceOp op) {
  return op == ReduceOp::Sum ? ncclSum : ncclAvg;
}

}  // namespace

struct NcclCommunicator::Impl {
  int rank = 0, size = 1, device = 0;
  double timeout = 0;
  CudaStream stream;
  CudaEvent ready;     // compute-stream position each collective waits for
  Tensor barrier_buf;  // one element for barrier()
  ncclComm_t comm = nullptr;

  struct InFlight {
    std::shared_ptr<CudaEvent> done;
    Clock::time_point deadline;
    std::string what;
  };
  std::mutex mutex;  // guards everything below and every NCCL call on comm
  std::condition_variable wake;
  std::deque<InFlight> inflight;
  bool failed = false, stopping = false;
  std::atomic<bool> aborted{false};
  std::string failure;
  std::thread watchdog;

  ~Impl() { shut_down(); }

  std::string nccl_message(const std::string& what, ncclResult_t r) const {
    return str_cat("rank ", rank, ": ", what, " failed: ", ncclGetErrorString(r), " (",
                   ncclGetLastError(comm), "); the NCCL communicator was aborted");
  }

  // Records the first failure; false when one was recorded before. From then
  // on nothing calls NCCL on comm but abort_comm().
  bool record_failure_locked(const std::string& why) {
    if (failed) return false;
    failed = true;
    failure = why;
    return true;
  }

  // Aborts the communicator, which ends every NCCL kernel still waiting for a
  // peer. Called once, by the thread that recorded the failure.
  void abort_comm() {
    if (comm && !aborted.exchange(true)) ncclCommAbort(comm);
  }

  void throw_if_failed_locked() const {
    if (failed) FG_THROW(failure);
  }

  // A non-blocking call returned ncclInProgress: poll until it settles.
  ncclResult_t settle_locked(const std::string& what, Clock::time_point deadline) {
    ncclResult_t state = ncclInProgress;
    while (true) {
      ncclCommGetAsyncError(comm, &state);
      if (state != ncclInProgress) return state;
      if (Clock::now() > deadline) {
        if (record_failure_locked(str_cat("rank ", rank, ": ", what, " timed out after ", timeout,
                                          " s while NCCL enqueued it; the NCCL communicator was "
                                          "aborted")))
          abort_comm();
        FG_THROW(failure);
      }
      std::this_thread::sleep_for(kPollPeriod);
    }
  }

  // Runs launch(comm, stream) on the communicator's stream after the work
  // queued so far on the compute stream; returns the event that marks its end.
  std::shared_ptr<CudaEvent> enqueue(
      const std::string& what,
      const std::function<ncclResult_t(ncclComm_t, cudaStream_t)>& launch) {
    std::lock_guard<std::mutex> lock(mutex);
    throw_if_failed_locked();
    FG_CUDA_CHECK(cudaEventRecord(ready.get(), cuda::stream()));
    FG_CUDA_CHECK(cudaStreamWaitEvent(stream.get(), ready.get(), 0));
    ncclResult_t r = launch(comm, stream.get());
    if (r == ncclInProgress) r = settle_locked(what, after(timeout));
    if (r != ncclSuccess) {
      if (record_failure_locked(nccl_message(what, r))) abort_comm();
      FG_THROW(failure);
    }
    auto done = std::make_shared<CudaEvent>();
    FG_CUDA_CHECK(cudaEventRecord(done->get(), stream.get()));
    inflight.push_back({done, after(timeout), what});
    wake.notify_all();
    return done;
  }

  // Blocks the host until `done` is reached; the watchdog bounds the wait.
  void host_wait(const CudaEvent& done) {
    while (true) {
      cudaError_t q = cudaEventQuery(done.get());
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) FG_CUDA_CHECK(q);
      {
        std::lock_guard<std::mutex> lock(mutex);
        throw_if_failed_locked();
      }
      std::this_thread::sleep_for(kPollPeriod);
    }
    std::lock_guard<std::mutex> lock(mutex);
    throw_if_failed_locked();  // an abort also ends the kernels: their results are void
  }

  void watch() {
    cudaSetDevice(device);
    std::unique_lock<std::mutex> lock(mutex);
    while (!stopping) {
      wake.wait_for(lock, kWatchdogPeriod);
      while (!inflight.empty() && cudaEventQuery(inflight.front().done->get()) == cudaSuccess)
        inflight.pop_front();
      if (failed) {
        inflight.clear();
        continue;
      }
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm, &state);
      std::string why;
      if (state != ncclSuccess && state != ncclInProgress) {
        why = nccl_message(inflight.empty() ? std::string("a collective") : inflight.front().what,
                           state);
      } else if (!inflight.empty() && Clock::now() > inflight.front().deadline) {
        why = str_cat("rank ", rank, ": ", inflight.front().what, " timed out after ", timeout,
                      " s (another rank stopped or called other collectives); the NCCL "
                      "communicator was aborted");
      }
      if (!why.empty() && record_failure_locked(why)) {
        // Abort without the lock: it can take as long as the stuck work, and
        // the waiting host must see the failure now.
        lock.unlock();
        abort_comm();
        lock.lock();
      }
    }
  }

  // Stops the watchdog; lets queued collectives finish and frees the
  // communicator, aborting it if that takes longer than the timeout.
  void shut_down() noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    wake.notify_all();
    if (watchdog.joinable()) watchdog.join();
    if (!comm || aborted) return;
    auto deadline = after(timeout);
    bool quiet = true;
    for (const InFlight& f : inflight)
      while (quiet && cudaEventQuery(f.done->get()) == cudaErrorNotReady)
        if (Clock::now() > deadline)
          quiet = false;
        else
          std::this_thread::sleep_for(kPollPeriod);
    if (quiet && ncclCommFinalize(comm) != ncclSuccess) {
      ncclResult_t state = ncclInProgress;
      while (quiet) {
        ncclCommGetAsyncError(comm, &state);
        if (state != ncclInProgress) break;
        if (Clock::now() > deadline) quiet = false;
        std::this_thread::sleep_for(kPollPeriod);
      }
      quiet = quiet && state == ncclSuccess;
    }
    if (quiet) {
      ncclCommDestroy(comm);
    } else {
      ncclCommAbort(comm);
    }
    comm = nullptr;
  }
};

namespace {

// A collective on the communicator's stream; wait() orders the compute stream after it.
class NcclWork final : public Work {
 public:
  NcclWork(NcclCommunicator::Impl* impl, std::shared_ptr<CudaEvent> done)
      : impl_(impl), done_(std::move(done)) {}
  void wait() override {
    {
      std::lock_guard<std::mutex> lock(impl_->mutex);
      impl_->throw_if_failed_locked();
    }
    FG_CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), done_->get(), 0));
  }

 private:
  NcclCommunicator::Impl* impl_;
  std::shared_ptr<CudaEvent> done_;
};

}  // namespace

std::vector<uint8_t> NcclCommunicator::new_unique_id() {
  ncclUniqueId id;
  FG_NCCL_CHECK(ncclGetUniqueId(&id));
  std::vector<uint8_t> bytes(sizeof id.internal);
  std::memcpy(bytes.data(), id.internal, bytes.size());
  return bytes;
}

NcclCommunicator::NcclCommunicator(const std::vector<uint8_t>& unique_id, int rank, int world_size,
                                   int device, double timeout_s) {
  ncclUniqueId id;
  FG_CHECK(unique_id.size() == sizeof id.internal, "NcclCommunicator: the unique id has ",
           unique_id.size(), " bytes but NCCL's has ", sizeof id.internal);
  FG_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "NcclCommunicator: rank ", rank,
           " of a world of ", world_size);
  FG_CHECK(timeout_s > 0, "NcclCommunicator: timeout must be > 0 s, got ", timeout_s);
  std::memcpy(id.internal, unique_id.data(), sizeof id.internal);
  cuda::set_device(device);
  impl_ = std::make_unique<Impl>();
  Impl& m = *impl_;
  m.rank = rank;
  m.size = world_size;
  m.device = device;
  m.timeout = timeout_s;
  m.barrier_buf = Tensor::zeros({1}, DType::F32, Device::cuda(device));

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // calls return at once; we poll, so a missing rank cannot hang us
  ncclResult_t r = ncclCommInitRankConfig(&m.comm, world_size, id, rank, &config);
  auto deadline = after(timeout_s);
  while (r == ncclInProgress && m.comm) {
    if (Clock::now() > deadline) {
      ncclCommAbort(m.comm);
      m.comm = nullptr;
      FG_THROW("rank ", rank, ": NCCL init of a world of ", world_size, " ranks timed out after ",
               timeout_s, " s waiting for the other ranks (are all of them started?)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ncclCommGetAsyncError(m.comm, &r);
  }
  if (r != ncclSuccess) {
    std::string why =
        str_cat("rank ", rank, ": NCCL init of a world of ", world_size, " ranks on cuda:", device,
                " failed: ", ncclGetErrorString(r), " (", ncclGetLastError(m.comm), ")");
    if (m.comm) ncclCommAbort(m.comm);
    m.comm = nullptr;
    FG_THROW(why);
  }
  m.watchdog = std::thread([&m] { m.watch(); });
}

std::shared_ptr<NcclCommunicator> NcclCommunicator::create(const ProcessGroup& pg,
                                                           double timeout_s) {
  int count = cuda_device_count();
  FG_CHECK(count > 0, "rank ", pg.rank, ": NCCL needs a GPU but none is visible");
  int device = count == 1 ? 0 : pg.local_rank;
  FG_CHECK(device < count, "rank ", pg.rank, ": LOCAL_RANK is ", pg.local_rank, " but only ", count,
           " GPUs are visible on this node; start at most one rank per GPU");
  std::vector<uint8_t> id;
  if (pg.rank == 0) id = new_unique_id();
  id = share_from_rank0(pg, id, timeout_s);
  return std::make_shared<NcclCommunicator>(id, pg.rank, pg.world_size, device, timeout_s);
}

NcclCommunicator::~NcclCommunicator() = default;

int NcclCommunicator::rank() const {
  return impl_->rank;
}
int NcclCommunicator::world_size() const {
  return impl_->size;
}
Device NcclCommunicator::device() const {
  return Device::cuda(impl_->device);
}

namespace {

std::shared_ptr<CudaEvent> start_all_reduce(NcclCommunicator::Impl& m, const Tensor& t,
                                            ReduceOp op) {
  return m.enqueue(detail::describe_collective("all_reduce", t) + " (" + reduce_op_name(op) + ")",
                   [&](ncclComm_t comm, cudaStream_t s) {
                     return ncclAllReduce(t.raw_data(), t.raw_data(),
                                          static_cast<size_t>(t.numel()), nccl_dtype(t.dtype()),
                                          nccl_op(op), comm, s);
                   });
}

std::shared_ptr<CudaEvent> start_reduce_scatter(NcclCommunicator::Impl& m, const Tensor& input,
                                                const Tensor& output, ReduceOp op) {
  return m.enqueue(
      detail::describe_collective("reduce_scatter", input) + " (" + reduce_op_name(op) + ")",
      [&](ncclComm_t comm, cudaStream_t s) {
        return ncclReduceScatter(input.raw_data(), output.raw_data(),
                                 static_cast<size_t>(output.numel()), nccl_dtype(input.dtype()),
                                 nccl_op(op), comm, s);
      });
}

}  // namespace

std::unique_ptr<Work> NcclCommunicator::all_reduce_async(const Tensor& t, ReduceOp op) {
  detail::check_all_reduce(*this, t);
  return std::make_unique<NcclWork>(impl_.get(), start_all_reduce(*impl_, t, op));
}

std::unique_ptr<Work> NcclCommunicator::reduce_scatter_async(const Tensor& input,
                                                             const Tensor& output, ReduceOp op) {
  detail::check_reduce_scatter(*this, input, output);
  return std::make_unique<NcclWork>(impl_.get(), start_reduce_scatter(*impl_, input, output, op));
}

void NcclCommunicator::all_reduce(const Tensor& t, ReduceOp op) {
  detail::check_all_reduce(*this, t);
  impl_->host_wait(*start_all_reduce(*impl_, t, op));
}

void NcclCommunicator::reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op) {
  detail::check_reduce_scatter(*this, input, output);
  impl_->host_wait(*start_reduce_scatter(*impl_, input, output, op));
}

void NcclCommunicator::all_gather(const Tensor& input, const Tensor& output) {
  detail::check_all_gather(*this, input, output);
  auto done = impl_->enqueue(detail::describe_collective("all_gather", input), [&](ncclComm_t comm,
                                                                                   cudaStream_t s) {
    return ncclAllGather(input.raw_data(), output.raw_data(), static_cast<size_t>(input.numel()),
                         nccl_dtype(input.dtype()), comm, s);
  });
  impl_->host_wait(*done);
}

void NcclCommunicator::broadcast(const Tensor& t, int root) {
  detail::check_broadcast(*this, t, root);
  auto done = impl_->enqueue(
      detail::describe_collective("broadcast", t) + " from rank " + std::to_string(root),
      [&](ncclComm_t comm, cudaStream_t s) {
        return ncclBroadcast(t.raw_data(), t.raw_data(), static_cast<size_t>(t.numel()),
                             nccl_dtype(t.dtype()), root, comm, s);
      });
  impl_->host_wait(*done);
}

void NcclCommunicator::barrier() {
  const Tensor& b = impl_->barrier_buf;
  auto done = impl_->enqueue("barrier", [&](ncclComm_t comm, cudaStream_t s) {
    return ncclAllReduce(b.raw_data(), b.raw_data(), 1, ncclFloat32, ncclSum, comm, s);
  });
  impl_->host_wait(*done);
}

}  // namespace fg::dist
#endif  // FG_CUDA
