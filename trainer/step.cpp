#include "trainer/step.h"

#include <cmath>
#include <cstring>

#include "core/storage.h"
#include "ops/add/add.h"
#include "ops/gemm/gemm.h"
#include "ops/grad_norm/grad_norm.h"

#ifdef FG_CUDA
#include <cuda_runtime.h>

#include "core/cuda_utils.h"
#endif

namespace fg::trainer {

namespace {
constexpr int kSlots = 2;  // token staging is double-buffered: the next batch is
                           // written while the copy of the current one may be queued

// Micro-batch m of a (grad_accum, micro, seq) tensor, as (micro, seq).
Tensor micro_batch(const Tensor& t, int64_t m) {
  return t.slice(0, m, m + 1).view({t.size(1), t.size(2)});
}
}  // namespace

// Host memory the step is uploaded from and read back into: pinned on CUDA so
// the copies are asynchronous and ordered on the compute stream.
struct TrainStep::Staging {
  size_t tokens = 0;  // int32 values per slot: inputs then targets
  bool pinned = false;
  int32_t* token_slots[kSlots] = {};
  double* lr_step = nullptr;  // lr, 1-based step
  double* results = nullptr;  // loss, grad norm (as their dtype's bytes)
  int slot = 0;               // the slot stage() wrote last
  double lr = 0;

  Staging(size_t n, bool use_pinned) : tokens(n), pinned(use_pinned) {
    for (auto& s : token_slots) s = static_cast<int32_t*>(allocate(2 * n * sizeof(int32_t)));
    lr_step = static_cast<double*>(allocate(2 * sizeof(double)));
    results = static_cast<double*>(allocate(2 * sizeof(double)));
  }
  ~Staging() {
    for (auto& s : token_slots) release(s);
    release(lr_step);
    release(results);
  }
  void* allocate(size_t bytes) const {
#ifdef FG_CUDA
    if (pinned) {
      void* p = nullptr;
      FG_CUDA_CHECK(cudaMallocHost(&p, bytes));
      return p;
    }
#endif
    return ::operator new(bytes);
  }
  void release(void* p) const {
#ifdef FG_CUDA
    if (pinned) {
      cudaFreeHost(p);
      return;
    }
#endif
    ::operator delete(p);
  }
};

struct TrainStep::Graph {
#ifdef FG_CUDA
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ~Graph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
  }
#endif
};

TrainStep::TrainStep(const TrainOptions& o, const GPT& model, AdamW& opt,
                     dist::GradReducer* reducer, int64_t micro)
    : o_(o), model_(model), opt_(opt), reducer_(reducer), micro_(micro) {
  const Device device = o.device;
  use_graph_ = o.cuda_graph && device.is_cuda() && !o.comm && !o.gradient_hook;
  // Batched weight products hold their operands to the end of backward (recomputation
  // exists to free them) and finish every gradient there, after which the data-parallel
  // all-reduce of several ranks could no longer overlap backward.
  batch_weight_grads_ = o.batch_weight_grads && o.recompute == Recompute::None &&
                        (!o.comm || o.comm->world_size() == 1);
  grads_ = gradients(model.params());
  // The forward reads its weights from these instead of casting each one every
  // step; AdamW writes them as it updates the masters.
  copies_ = model.make_compute_copies();
  opt.keep_copies(copies_);
  const Shape shape{o.grad_accum, micro, o.seq};
  inputs_ = Tensor::zeros(shape, DType::I32, device);
  targets_ = Tensor::zeros(shape, DType::I32, device);
  lr_step_ = Tensor::zeros({2}, DType::F64, device);
  const DType master = model.params().front().data().dtype();
  loss_ = Tensor::zeros({}, o.dtype == DType::F64 ? DType::F64 : DType::F32, device);
  grad_norm_ = Tensor::zeros({}, master, device);
  if (!o.comm) {
    norm_ = std::make_shared<ops::GradNormInBackward>(grads_);
    std::weak_ptr<ops::GradNormInBackward> weak = norm_;
    for (size_t i = 0; i < model.params().size(); ++i) {
      ag::Variable p = model.params()[i];
      p.register_grad_ready_hook([weak, i](ag::Variable&) {
        if (auto live = weak.lock()) live->ready(i);
      });
    }
  }
  staging_ = std::make_unique<Staging>(static_cast<size_t>(inputs_.numel()), device.is_cuda());
}

TrainStep::~TrainStep() = default;

void TrainStep::stage(const std::vector<Batch>& micro_batches, double lr) {
  FG_CHECK(static_cast<int64_t>(micro_batches.size()) == o_.grad_accum, "train step: ",
           micro_batches.size(), " micro-batches for --grad-accum ", o_.grad_accum);
  Staging& s = *staging_;
  s.slot = (s.slot + 1) % kSlots;
  const size_t per = static_cast<size_t>(micro_ * o_.seq);
  for (size_t m = 0; m < micro_batches.size(); ++m) {
    const Batch& b = micro_batches[m];
    FG_CHECK(static_cast<size_t>(b.inputs.numel()) == per && b.inputs.is_contiguous() &&
                 b.targets.is_contiguous() && b.inputs.dtype() == DType::I32,
             "train step: a micro-batch is ", b.inputs.shape_str(), " but the step takes (", micro_,
             ", ", o_.seq, ") i32");
    std::memcpy(s.token_slots[s.slot] + m * per, b.inputs.raw_data(), per * sizeof(int32_t));
    std::memcpy(s.token_slots[s.slot] + s.tokens + m * per, b.targets.raw_data(),
                per * sizeof(int32_t));
  }
  s.lr = lr;
}

void TrainStep::upload() {
  Staging& s = *staging_;
  // The step count is taken now, not at stage(): the previous step's skip is known.
  s.lr_step[0] = s.lr;
  s.lr_step[1] = static_cast<double>(opt_.step_count() + 1);
  const size_t bytes = s.tokens * sizeof(int32_t);
  if (!s.pinned) {
    std::memcpy(inputs_.raw_data(), s.token_slots[s.slot], bytes);
    std::memcpy(targets_.raw_data(), s.token_slots[s.slot] + s.tokens, bytes);
    std::memcpy(lr_step_.raw_data(), s.lr_step, 2 * sizeof(double));
    return;
  }
#ifdef FG_CUDA
  cudaStream_t stream = cuda::stream();
  FG_CUDA_CHECK(cudaMemcpyAsync(inputs_.raw_data(), s.token_slots[s.slot], bytes,
                                cudaMemcpyHostToDevice, stream));
  FG_CUDA_CHECK(cudaMemcpyAsync(targets_.raw_data(), s.token_slots[s.slot] + s.tokens, bytes,
                                cudaMemcpyHostToDevice, stream));
  FG_CUDA_CHECK(cudaMemcpyAsync(lr_step_.raw_data(), s.lr_step, 2 * sizeof(double),
                                cudaMemcpyHostToDevice, stream));
#endif
}

void TrainStep::run(bool update) {
  for (const ag::Variable& p : model_.params()) const_cast<ag::Variable&>(p).zero_grad_in_place();
  const int64_t accum = o_.grad_accum;
  for (int64_t m = 0; m < accum; ++m) {
    if (reducer_ && m == accum - 1) reducer_->arm();  // reduce during the last backward
    // The norm during the last backward, unless a hook may still change the gradients.
    if (norm_ && update && !o_.gradient_hook && m == accum - 1) norm_->start();
    ag::Variable l =
        model_.loss(micro_batch(inputs_, m), micro_batch(targets_, m), o_.recompute, copies_);
    if (m == 0)
      loss_.copy_(l.data());
    else
      ops::add_inplace(loss_, l.data());
    ops::GemmBatch weight_grads(batch_weight_grads_);
    l.backward(Tensor::full({}, 1.0 / static_cast<double>(accum), l.dtype(), l.device()));
    weight_grads.flush();  // then the grad-ready hooks (norm, reducer) see finished buffers
  }
  if (accum > 1) ops::scale_grads({loss_}, 1.0 / static_cast<double>(accum));  // the mean
  for (const ag::Variable& p : model_.params())
    if (p.grad_zeroed_in_place()) p.grad().zero_();  // no gradient reached it this step
  if (reducer_) reducer_->finish();
  std::vector<Tensor> grads = o_.zero ? reducer_->gradient_shards() : grads_;
  if (!update) return;
  if (o_.gradient_hook) o_.gradient_hook(grads);

  if (!o_.comm) {
    // All on the device: the norm, then AdamW clips with it and skips the
    // update when it or the loss is not finite.
    grad_norm_.copy_(norm_->finish());
    opt_.step({lr_step_, grad_norm_, loss_, o_.clip});
    return;
  }
  // Data parallel: every rank decides from the same numbers, the mean loss,
  // the norm of the whole gradient (under ZeRO-1 summed from the ranks' pieces)
  // and how many ranks saw something non-finite, so no rank skips alone.
  const int world = o_.comm->world_size();
  double loss = loss_.item();
  // Replicated, every rank holds the whole mean gradient: its norm, rounded as
  // the single-device step rounds it, and AdamW clips with it the same way, so
  // a world of one updates bit for bit as the step without a communicator.
  double local;
  if (o_.zero) {
    local = ops::global_grad_norm(grads);
  } else {
    grad_norm_.copy_(ops::grad_norm(grads));
    local = grad_norm_.item();
  }
  Tensor stats = Tensor::from_vector(
      {loss, o_.zero ? local * local : 0.0, std::isfinite(loss) && std::isfinite(local) ? 0.0 : 1.0},
      {3}, DType::F64, o_.comm->device());
  o_.comm->all_reduce(stats, dist::ReduceOp::Sum);
  std::vector<double> sum = stats.to_vector();
  StepStats& r = ddp_stats_;
  r.loss = sum[0] / static_cast<double>(world);
  r.grad_norm = o_.zero ? std::sqrt(sum[1]) : local;
  r.finite = sum[2] == 0 && std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  if (!r.finite) return;
  if (!o_.zero) {
    opt_.step({lr_step_, grad_norm_, Tensor(), o_.clip});
    return;
  }
  if (o_.clip > 0 && r.grad_norm > o_.clip)
    ops::scale_grads(grads, o_.clip / (r.grad_norm + 1e-6));  // as clip_grad_norm does
  opt_.step({lr_step_, Tensor(), Tensor(), 0.0});
}

void TrainStep::capture() {
#ifdef FG_CUDA
  cudaStream_t stream = cuda::stream();
  graph_ = std::make_unique<Graph>();
  FG_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  try {
    run(true);
  } catch (...) {
    cudaGraph_t broken = nullptr;
    cudaStreamEndCapture(stream, &broken);
    if (broken) cudaGraphDestroy(broken);
    cudaGetLastError();
    graph_.reset();
    throw;
  }
  cudaError_t err = cudaStreamEndCapture(stream, &graph_->graph);
  FG_CHECK(err == cudaSuccess, "CUDA graph capture of the training step failed (",
           cudaGetErrorString(err), "); run with --no-cuda-graph");
  // Every tensor the step allocates is freed inside it; auto-free is a guard.
  FG_CUDA_CHECK(cudaGraphInstantiateWithFlags(
      &graph_->exec, graph_->graph,
      cudaGraphInstantiateFlagAutoFreeOnLaunch | cudaGraphInstantiateFlagUseNodePriority));
#endif
}

void TrainStep::launch() {
  upload();
  if (!use_graph_) {
    run(true);
    return;
  }
#ifdef FG_CUDA
  if (!graph_) capture();
  FG_CUDA_CHECK(cudaGraphLaunch(graph_->exec, cuda::stream()));
#endif
}

StepStats TrainStep::wait() {
  StepStats r;
  if (o_.comm) {
    r = ddp_stats_;
  } else {
    const Tensor* outs[2] = {&loss_, &grad_norm_};
    double values[2] = {};
    if (staging_->pinned) {
#ifdef FG_CUDA
      for (int i = 0; i < 2; ++i)
        FG_CUDA_CHECK(cudaMemcpyAsync(staging_->results + i, outs[i]->raw_data(),
                                      outs[i]->nbytes(), cudaMemcpyDeviceToHost, cuda::stream()));
      FG_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));  // the one sync of a step
      for (int i = 0; i < 2; ++i)
        values[i] = outs[i]->dtype() == DType::F64
                        ? staging_->results[i]
                        : static_cast<double>(*reinterpret_cast<const float*>(staging_->results + i));
#endif
    } else {
      for (int i = 0; i < 2; ++i) values[i] = outs[i]->item();
    }
    r.loss = values[0];
    r.grad_norm = values[1];
    r.finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  }
  if (r.finite) opt_.set_step_count(opt_.step_count() + 1);
  return r;
}

MemorySummary TrainStep::dry_run() {
  MemorySummary m;
  for (const ag::Variable& p : model_.params()) m.params += static_cast<int64_t>(p.data().nbytes());
  for (const Tensor& c : copies_) m.params += static_cast<int64_t>(c.nbytes());  // bf16 copies
  for (const Tensor& g : grads_) m.grads += static_cast<int64_t>(g.nbytes());
  m.optimizer = opt_.state_bytes();
  upload();
  const int64_t before = Storage::live_bytes();
  Storage::reset_peak_bytes();
  run(false);
#ifdef FG_CUDA
  if (o_.device.is_cuda()) FG_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
#endif
  m.peak = Storage::peak_bytes();
  m.activations = m.peak - before;
  m.workspace = static_cast<int64_t>(ops::gemm_workspace_bytes(o_.device));
  return m;
}

}  // namespace fg::trainer
