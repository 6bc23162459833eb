// train_gpt: trains the Llama-style GPT of DESIGN.md. With no arguments it
// trains a small model on the built-in synthetic Markov corpus on the best
// device present and reports how close the loss gets to the exact entropy rate.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "dist/nccl_communicator.h"
#include "dist/rendezvous.h"
#include "dist/thread_communicator.h"
#include "trainer/loop.h"

namespace {

// One flag per GPTConfig field, named after it with dashes.
void add_config_flags(CLI::App& app, fg::trainer::GPTConfig& cfg) {
  cfg.visit_fields([&](const char* name, auto& field) {
    std::string flag = std::string("--") + name;
    for (char& c : flag)
      if (c == '_') c = '-';
    using T = std::remove_reference_t<decltype(field)>;
    if constexpr (std::is_same_v<T, bool>) {
      app.add_flag(flag, field, fg::trainer::GPTConfig::field_help(name))->group("Model");
    } else {
      app.add_option(flag, field, fg::trainer::GPTConfig::field_help(name))
          ->capture_default_str()
          ->group("Model");
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fusegpt train_gpt: train a small Llama-style GPT"};
  fg::trainer::TrainOptions o;
  // The default run: a small model on the synthetic corpus, a few minutes on a laptop CPU.
  o.model.vocab_size = 0;  // the data's vocabulary
  o.model.n_layer = 2;
  o.model.n_head = 4;
  o.model.d_model = 64;
  o.model.max_seq_len = 64;
  o.steps = 600;
  o.batch = 16;
  o.seq = 32;
  o.schedule.lr = 3e-3;
  o.schedule.min_lr = 3e-4;
  o.schedule.warmup_steps = 50;
  o.eval_every = 100;
  add_config_flags(app, o.model);

  std::string device = "auto", dtype = "auto", recompute = "none";
  int64_t total_steps = 0;
  app.add_option("--data", o.data, "text file or prepared token file (default: synthetic corpus)")
      ->group("Data");
  app.add_option("--tokenizer", o.tokenizer, "for text files: byte or char")
      ->check(CLI::IsMember({"byte", "char"}))->capture_default_str()->group("Data");
  app.add_option("--synth-vocab", o.synth_vocab, "synthetic corpus: vocabulary size (2..26)")
      ->capture_default_str()->group("Data");
  app.add_option("--synth-order", o.synth_order, "synthetic corpus: Markov order")
      ->capture_default_str()->group("Data");
  app.add_option("--synth-tokens", o.synth_tokens, "synthetic corpus: tokens generated")
      ->capture_default_str()->group("Data");
  app.add_option("--device", device, "cpu, cuda, cuda:N or auto (the GPU when present)")
      ->capture_default_str();
  app.add_option("--dtype", dtype,
                 "compute dtype: f32, f64, bf16 (GPU; f32 master weights) or auto (bf16 on a GPU, "
                 "f32 on the CPU)")
      ->capture_default_str();
  app.add_option("--steps", o.steps, "optimizer steps")->capture_default_str();
  app.add_option("--batch", o.batch, "sequences per step")->capture_default_str();
  app.add_option("--seq", o.seq, "tokens per sequence (<= --max-seq-len)")->capture_default_str();
  app.add_option("--grad-accum", o.grad_accum, "micro-batches per step (divides --batch)")
      ->capture_default_str();
  app.add_option("--lr", o.schedule.lr, "peak learning rate")->capture_default_str()->group("Optimizer");
  app.add_option("--min-lr", o.schedule.min_lr, "learning rate at the end of the cosine")
      ->capture_default_str()->group("Optimizer");
  app.add_option("--warmup", o.schedule.warmup_steps, "linear warmup steps")
      ->capture_default_str()->group("Optimizer");
  app.add_option("--decay-steps", total_steps, "step where the cosine reaches --min-lr (default --steps)")
      ->group("Optimizer");
  app.add_option("--beta1", o.beta1, "AdamW beta1")->capture_default_str()->group("Optimizer");
  app.add_option("--beta2", o.beta2, "AdamW beta2")->capture_default_str()->group("Optimizer");
  app.add_option("--adam-eps", o.adam_eps, "AdamW epsilon")->capture_default_str()->group("Optimizer");
  app.add_option("--weight-decay", o.weight_decay, "decoupled weight decay (matrices only)")
      ->capture_default_str()->group("Optimizer");
  app.add_option("--clip", o.clip, "global gradient-norm clip (0: off)")
      ->capture_default_str()->group("Optimizer");
  app.add_option("--eval-every", o.eval_every, "steps between val evaluations (0: never)")
      ->capture_default_str();
  app.add_option("--eval-batches", o.eval_batches, "val batches per evaluation")->capture_default_str();
  app.add_option("--recompute", recompute, "activation recomputation: none, attn or full")
      ->check(CLI::IsMember({"none", "attn", "full"}))->capture_default_str();
  bool no_cuda_graph = false;
  app.add_flag("--no-cuda-graph", no_cuda_graph,
               "CUDA: launch each step's kernels one by one instead of replaying a captured graph");
  bool no_batch_weight_grads = false;
  app.add_flag("--no-batch-weight-grads", no_batch_weight_grads,
               "run each weight-gradient product where backward reaches it, not batched across "
               "layers at its end (less memory; always so with several data-parallel ranks)");
  app.add_option("--seed", o.seed, "seed for weights, data order and the synthetic corpus")
      ->capture_default_str();
  app.add_option("--max-bad-steps", o.max_bad_steps, "abort after this many non-finite steps in a row")
      ->capture_default_str();
  app.add_option("--save", o.save, "checkpoint path (HDF5), written at the end")->group("Checkpoint");
  app.add_option("--save-every", o.save_every, "also save every N steps (0: only at the end)")
      ->group("Checkpoint");
  app.add_option("--resume", o.resume, "continue from this checkpoint (bit-exact)")
      ->check(CLI::ExistingFile)->group("Checkpoint");
  app.add_option("--log", o.log, "JSONL metrics, one object per step");
  double dist_timeout = 300;
  int cpu_ranks = 1;
  app.add_option("--bucket-mb", o.bucket_mb, "data parallel: gradient bucket size in MB")
      ->capture_default_str()
      ->group("Distributed");
  app.add_option("--zero", o.zero, "data parallel: 1 shards the AdamW states across ranks (ZeRO-1)")
      ->check(CLI::IsMember({0, 1}))
      ->capture_default_str()
      ->group("Distributed");
  app.add_option("--dist-timeout", dist_timeout,
                 "data parallel: seconds a rank waits for the others before failing")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group("Distributed");
  app.add_option("--cpu-ranks", cpu_ranks,
                 "data parallel over N ranks in this process (threads, --device cpu): the "
                 "distributed path without GPUs")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group("Distributed");
  bool quiet = false;
  app.add_flag("--quiet", quiet, "no progress output");
  CLI11_PARSE(app, argc, argv);

  try {
    if (device == "auto") {
      o.device = fg::cuda_available() ? fg::Device::cuda(0) : fg::Device::cpu();
    } else {
      o.device = fg::parse_device(device);
      if (o.device.is_cuda())
        FG_CHECK(fg::cuda_available(), "--device ", device, ": no CUDA GPU is available",
#ifdef FG_CUDA
                 " (no device or driver)"
#else
                 " (this build has FG_CUDA=OFF)"
#endif
        );
    }
    if (dtype == "auto") {
      bool bf16_ok = o.device.is_cuda() && fg::cuda_compute_capability(o.device.index) >= 80;
      o.dtype = bf16_ok ? fg::DType::BF16 : fg::DType::F32;
    } else {
      o.dtype = fg::dtype_from_name(dtype);
    }
    FG_CHECK(o.dtype != fg::DType::I32, "--dtype: expected f32, f64 or bf16, got '", dtype, "'");
    if (o.dtype == fg::DType::BF16 && o.device.is_cuda()) {
      int cc = fg::cuda_compute_capability(o.device.index);
      FG_CHECK(cc >= 80, "--dtype bf16: ", o.device.str(), " has compute capability ", cc / 10, ".",
               cc % 10, "; bf16 needs 8.0 or newer (use --dtype f32)");
    }
    // Started by fgrun, torchrun, mpirun or srun with several ranks: one GPU
    // each (LOCAL_RANK), gradients averaged over NCCL.
    if (auto pg = fg::dist::process_group_from_env(); pg && pg->world_size > 1) {
      FG_CHECK(o.device.is_cuda(), "rank ", pg->rank, " of ", pg->world_size, " (", pg->launcher,
               " variables are set): multi-process data parallel runs over NCCL and needs --device "
               "cuda, got ",
               o.device.str());
#ifdef FG_CUDA
      o.comm = fg::dist::NcclCommunicator::create(*pg, dist_timeout);
      o.device = o.comm->device();
#endif
    }
    o.recompute = fg::trainer::parse_recompute(recompute);
    o.schedule.total_steps = total_steps > 0 ? total_steps : o.steps;
    o.progress = !quiet;
    o.cuda_graph = !no_cuda_graph;
    o.batch_weight_grads = !no_batch_weight_grads;
    if (!o.resume.empty()) {
      // The model's shape comes from the checkpoint unless a flag names it.
      fg::trainer::GPTConfig ck = fg::trainer::load_checkpoint_config(o.resume);
      o.model.visit_fields([&](const char* name, auto& field) {
        std::string flag = std::string("--") + name;
        for (char& c : flag)
          if (c == '_') c = '-';
        if (app.count(flag) > 0) return;
        ck.visit_fields([&](const char* other, const auto& value) {
          if (std::string(name) == other) field = static_cast<std::remove_reference_t<decltype(field)>>(value);
        });
      });
    }
    if (cpu_ranks > 1) {
      FG_CHECK(o.device.is_cpu() && !o.comm,
               "--cpu-ranks runs the ranks as threads of one process on the CPU; use --device cpu "
               "and no launcher");
      std::vector<std::string> errors = fg::dist::run_on_threads(
          cpu_ranks, dist_timeout, [&](const std::shared_ptr<fg::dist::Communicator>& comm) {
            fg::trainer::TrainOptions mine = o;
            mine.comm = comm;
            fg::trainer::train(mine);
          });
      for (size_t r = 0; r < errors.size(); ++r)
        if (!errors[r].empty()) throw std::runtime_error(errors[r]);  // the first rank that failed
      return 0;
    }
    fg::trainer::train(o);
    return 0;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::cerr << "\ntrain_gpt: error: " << e.what() << "\n";
    return 1;
  }
}
