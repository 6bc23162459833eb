#include "trainer/loop.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "trainer/checkpoint.h"
#include "trainer/loader.h"
#include "trainer/markov.h"
#include "trainer/step.h"
#include "trainer/token_file.h"
#include "trainer/tokenizer.h"

namespace fg::trainer {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FG_CHECK(in.good(), path, ": cannot open for reading");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  FG_CHECK(!text.empty(), path, ": the file is empty; there is nothing to train on");
  return text;
}

// Everything the run reads: tokens, their tokenizer, and (synthetic) the best loss.
struct Dataset {
  std::unique_ptr<DataLoader> loader;
  Tokenizer tokenizer = Tokenizer::byte_level();
  double entropy_rate = -1;
  int64_t unscored_positions = 0;  // leading targets of each row that are not scored
  std::string description;

  // On the synthetic corpus the first order-1 targets of a row lack the context
  // that defines their distribution; not scoring them makes the entropy rate the
  // exact bound for the loss.
  Batch train(int64_t step, int rank, int world, int64_t micro, int64_t seq, int m) const {
    return mask(loader->train_batch(step, rank, world, micro, seq, m));
  }
  Batch val(int64_t index, int64_t micro, int64_t seq) const {
    return mask(loader->val_batch(index, micro, seq));
  }
  Batch mask(Batch b) const {
    if (unscored_positions > 0) b.targets.slice(1, 0, unscored_positions).fill_(-1);
    return b;
  }
};

Dataset open_dataset(const TrainOptions& o) {
  Dataset d;
  if (o.data.empty()) {
    FG_CHECK(o.synth_vocab >= 2 && o.synth_vocab <= 26, "--synth-vocab must be in [2, 26], got ",
             o.synth_vocab);
    MarkovSource source(o.synth_vocab, static_cast<int>(o.synth_order), o.seed,
                        o.synth_concentration);
    d.loader = std::make_unique<DataLoader>(source.generate(o.synth_tokens, o.seed + 1),
                                            o.synth_vocab, o.seed, "synthetic corpus");
    d.tokenizer = Tokenizer::char_level_from_vocab([&] {
      std::vector<uint8_t> v;
      for (int64_t i = 0; i < o.synth_vocab; ++i) v.push_back(static_cast<uint8_t>('a' + i));  // printable names
      return v;
    }());
    d.entropy_rate = source.entropy_rate();
    d.unscored_positions = o.synth_order - 1;
    d.description = source.describe();
  } else if (TokenFile::is_token_file(o.data)) {
    auto file = std::make_shared<const TokenFile>(o.data);
    d.tokenizer = file->tokenizer();
    d.loader = std::make_unique<DataLoader>(file, o.seed);
    d.description = str_cat(o.data, ": ", file->size(), " tokens (prepared, ",
                            d.tokenizer.kind(), ", vocab ", d.tokenizer.vocab_size(), ")");
  } else {
    std::string text = read_text_file(o.data);
    FG_CHECK(o.tokenizer == "char" || o.tokenizer == "byte", "--tokenizer: expected byte or char, got '",
             o.tokenizer, "'");
    d.tokenizer = o.tokenizer == "char" ? Tokenizer::char_level_from_text(text)
                                        : Tokenizer::byte_level();
    std::vector<int32_t> ids = d.tokenizer.encode(text);
    d.loader = std::make_unique<DataLoader>(ids, d.tokenizer.vocab_size(), o.seed, o.data);
    d.description = str_cat(o.data, ": ", ids.size(), " tokens (", d.tokenizer.kind(),
                            ", vocab ", d.tokenizer.vocab_size(), ")");
  }
  return d;
}

NamedTensors named(const std::vector<ParamSpec>& specs, const std::vector<Tensor>& tensors) {
  NamedTensors out;
  for (size_t i = 0; i < specs.size(); ++i)
    out.emplace_back(specs[i].name, tensors[i].to(Device::cpu(), DType::F32));
  return out;
}

// The tensor called `name`; check_model_tensors has made sure it is there.
const Tensor& named_tensor(const NamedTensors& tensors, const std::string& name) {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  FG_THROW("no tensor named ", name);
}

std::vector<Tensor> data_of(const std::vector<ag::Variable>& vars) {
  std::vector<Tensor> t;
  for (const auto& v : vars) t.push_back(v.data());
  return t;
}

// Every rank calls it (sharded optimizer states are gathered first); rank 0 writes.
void save(const TrainOptions& o, const std::string& path, const GPT& model, const AdamW& opt,
          const Dataset& data, int64_t step, int64_t tokens_seen, const ScheduleConfig& sched) {
  std::vector<Tensor> exp_avg = opt.exp_avg(), exp_avg_sq = opt.exp_avg_sq();
  if (o.comm && o.comm->rank() != 0) return;
  CheckpointData ck;
  ck.config = model.config();
  ck.step = step;
  ck.tokens_seen = tokens_seen;
  ck.model = named(model.specs(), data_of(model.params()));
  ck.exp_avg = named(model.specs(), exp_avg);
  ck.exp_avg_sq = named(model.specs(), exp_avg_sq);
  ck.optimizer.lr = lr_at(sched, std::max<int64_t>(step - 1, 0));
  ck.optimizer.beta1 = opt.beta1();
  ck.optimizer.beta2 = opt.beta2();
  ck.optimizer.eps = opt.eps();
  ck.optimizer.weight_decay = opt.weight_decay();
  ck.optimizer.step = opt.step_count();
  // The loader is a pure function of (seed, step), so these are all exact resume needs.
  ck.trainer_ints["seed"] = static_cast<int64_t>(o.seed);
  ck.trainer_ints["data_step"] = step;
  ck.trainer_ints["rng_seed"] = static_cast<int64_t>(o.seed);
  ck.trainer_ints["rng_offset"] = 0;
  ck.trainer_ints["synth_vocab"] = o.synth_vocab;
  ck.trainer_ints["synth_order"] = o.synth_order;
  ck.trainer_ints["synth_tokens"] = o.synth_tokens;
  ck.trainer_floats["synth_concentration"] = o.synth_concentration;
  ck.trainer_strings["data"] = o.data;
  ck.tokenizer_kind = data.tokenizer.kind();
  ck.tokenizer_vocab = data.tokenizer.vocab();
  save_checkpoint(path, ck);
}

// What --resume restores besides the weights (which go straight into the model).
struct Resumed {
  explicit Resumed(size_t n_params = 0) : exp_avg(n_params), exp_avg_sq(n_params) {}
  std::vector<Tensor> exp_avg, exp_avg_sq;  // table order
  int64_t opt_step = 0, step = 0, tokens_seen = 0;
};

// Loads o.resume into the model, checked against the run's config and seed.
Resumed read_resume(const TrainOptions& o, const GPT& model) {
  CheckpointData ck = load_checkpoint(o.resume);
  o.model.visit_fields([&](const char* name, const auto& mine) {
    ck.config.visit_fields([&](const char* other, const auto& theirs) {
      if (std::string(name) != other) return;
      FG_CHECK(static_cast<double>(mine) == static_cast<double>(theirs), o.resume,
               ": checkpoint has ", name, " = ", theirs, " but the run asks for ", mine);
    });
  });
  FG_CHECK(ck.trainer_ints["seed"] == static_cast<int64_t>(o.seed), o.resume,
           ": checkpoint was trained with --seed ", ck.trainer_ints["seed"],
           "; exact resume needs the same seed, got ", o.seed);
  std::vector<std::pair<std::string, Shape>> expected;
  for (const ParamSpec& s : model.specs()) expected.emplace_back(s.name, s.shape);
  check_model_tensors(o.resume, ck.model, expected);
  check_model_tensors(o.resume, ck.exp_avg, expected);
  check_model_tensors(o.resume, ck.exp_avg_sq, expected);
  Resumed r(expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const std::string& name = expected[i].first;
    model.params()[i].data().copy_(named_tensor(ck.model, name));
    r.exp_avg[i] = named_tensor(ck.exp_avg, name);
    r.exp_avg_sq[i] = named_tensor(ck.exp_avg_sq, name);
  }
  r.opt_step = ck.optimizer.step;
  r.step = ck.step;
  r.tokens_seen = ck.tokens_seen;
  return r;
}

// Rank 0 read the checkpoint: every rank takes its counters and optimizer
// states (the weights follow with GradReducer::broadcast_parameters).
void share_resumed(dist::Communicator& comm, const GPT& model, Resumed* r) {
  Tensor counters =
      Tensor::from_vector({static_cast<double>(r->step), static_cast<double>(r->tokens_seen),
                           static_cast<double>(r->opt_step)},
                          {3}, DType::F64, comm.device());
  comm.broadcast(counters, 0);
  std::vector<double> c = counters.to_vector();
  r->step = static_cast<int64_t>(c[0]);
  r->tokens_seen = static_cast<int64_t>(c[1]);
  r->opt_step = static_cast<int64_t>(c[2]);
  for (size_t i = 0; i < model.params().size(); ++i) {
    const Tensor& p = model.params()[i].data();
    for (Tensor* state : {&r->exp_avg[i], &r->exp_avg_sq[i]}) {
      *state = comm.rank() == 0 ? state->to(p.device(), p.dtype())
                                : Tensor::zeros(p.shape(), p.dtype(), p.device());
      comm.broadcast(*state, 0);
    }
  }
}

std::string format_bytes(int64_t b) {
  char buf[32];
  if (b >= (int64_t{1} << 30))
    std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / (1 << 30));
  else
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1 << 20));
  return buf;
}

void print_memory(const MemorySummary& m, bool graph) {
  std::printf(
      "memory: params %s, grads %s, AdamW states %s, activations %s (peak of a step), "
      "workspace %s; peak %s%s\n",
      format_bytes(m.params).c_str(), format_bytes(m.grads).c_str(),
      format_bytes(m.optimizer).c_str(), format_bytes(m.activations).c_str(),
      format_bytes(m.workspace).c_str(), format_bytes(m.peak + m.workspace).c_str(),
      graph ? "; each step replays one CUDA graph" : "");
}

std::string format_eta(double s) {
  int t = static_cast<int>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d:%02d", t / 60, t % 60);
  return buf;
}

}  // namespace

GPTConfig load_checkpoint_config(const std::string& path) { return load_checkpoint(path).config; }

LoadedModel load_model(const std::string& path, Device device, DType dtype) {
  CheckpointData ck = load_checkpoint(path);
  ck.config.validate();
  GPT model(ck.config, 0, device, dtype);
  std::vector<std::pair<std::string, Shape>> expected;
  for (const ParamSpec& s : model.specs()) expected.emplace_back(s.name, s.shape);
  check_model_tensors(path, ck.model, expected);
  for (size_t i = 0; i < expected.size(); ++i)
    model.params()[i].data().copy_(named_tensor(ck.model, expected[i].first));
  Tokenizer tok = ck.tokenizer_kind == "byte" ? Tokenizer::byte_level()
                                               : Tokenizer::char_level_from_vocab(ck.tokenizer_vocab);
  return LoadedModel{std::move(model), std::move(tok), ck.step};
}

TrainResult train(const TrainOptions& options) {
  TrainOptions o = options;
  FG_CHECK(o.steps >= 0, "--steps must be >= 0, got ", o.steps);
  FG_CHECK(o.batch > 0, "--batch must be > 0, got ", o.batch);
  FG_CHECK(o.seq > 0, "--seq must be > 0, got ", o.seq);
  FG_CHECK(o.grad_accum > 0 && o.batch % o.grad_accum == 0, "--grad-accum (", o.grad_accum,
           ") must divide --batch (", o.batch, ")");
  FG_CHECK(o.seq <= o.model.max_seq_len, "--seq (", o.seq, ") is longer than --max-seq-len (",
           o.model.max_seq_len, ")");
  const int rank = o.comm ? o.comm->rank() : 0;
  const int world = o.comm ? o.comm->world_size() : 1;
  const bool leader = rank == 0;  // prints, logs and writes checkpoints
  FG_CHECK(o.batch / o.grad_accum % world == 0, "--batch (", o.batch,
           ") must split into --grad-accum (", o.grad_accum,
           ") micro-batches of equal slices for each of the ", world,
           " ranks: batch / grad-accum / world size must be a whole number");
  FG_CHECK(o.zero == 0 || o.zero == 1, "--zero must be 0 or 1, got ", o.zero);
  FG_CHECK(o.zero == 0 || o.comm,
           "--zero 1 shards the optimizer states across ranks; it needs a "
           "distributed run (WORLD_SIZE set by a launcher such as fgrun)");
  FG_CHECK(o.bucket_mb > 0, "--bucket-mb must be > 0, got ", o.bucket_mb);
  FG_CHECK(!o.comm || o.comm->device() == o.device, "the ", o.comm ? o.comm->name() : "",
           " communicator works on ", o.comm ? o.comm->device().str() : "", " but --device is ",
           o.device.str());
  Dataset data = open_dataset(o);
  if (o.model.vocab_size == 0) o.model.vocab_size = data.loader->vocab_size();
  o.model.validate();
  FG_CHECK(data.loader->vocab_size() <= o.model.vocab_size, "--vocab-size (", o.model.vocab_size,
           ") is smaller than the data's vocabulary (", data.loader->vocab_size(), ")");
  data.loader->check_seq(o.seq);

  FG_CHECK(o.dtype != DType::BF16 || o.device.is_cuda(),
           "--dtype bf16 needs --device cuda (the CPU reference computes in f32 or f64)");
  // Master weights, gradients and Adam states stay f32 (f64 for f64 runs); the
  // forward and backward compute in o.dtype.
  GPT model(o.model, o.seed, o.device, o.dtype == DType::F64 ? DType::F64 : DType::F32, o.dtype);
  std::unique_ptr<dist::GradReducer> reducer;
  if (o.comm)
    reducer = std::make_unique<dist::GradReducer>(
        model.params(), o.comm,
        dist::ReducerOptions{static_cast<int64_t>(o.bucket_mb * (1 << 20)), o.zero == 1});
  AdamW opt(model.params(), model.specs(), o.beta1, o.beta2, o.adam_eps, o.weight_decay,
            o.zero == 1 ? reducer.get() : nullptr);
  ScheduleConfig sched = o.schedule;
  int64_t start_step = 0, tokens_seen = 0;

  if (!o.resume.empty()) {
    // Rank 0 reads the checkpoint; the other ranks receive what it read.
    Resumed r = leader ? read_resume(o, model) : Resumed(model.params().size());
    if (o.comm) share_resumed(*o.comm, model, &r);
    opt.load_state(r.exp_avg, r.exp_avg_sq);
    opt.set_step_count(r.opt_step);
    start_step = r.step;
    tokens_seen = r.tokens_seen;
    FG_CHECK(start_step <= o.steps, o.resume, ": checkpoint is at step ", start_step,
             " but --steps is ", o.steps);
  }

  if (reducer) reducer->broadcast_parameters();  // every rank starts from rank 0's weights

  const bool tty = isatty(fileno(stdout));
  const bool show = o.progress && leader;
  if (leader) {
    std::printf("data: %s\n", data.description.c_str());
    std::printf(
        "model: %lld parameters, %lld layers, d_model %lld, %lld heads (%lld kv), on %s %s\n",
        static_cast<long long>(model.num_params()), static_cast<long long>(o.model.n_layer),
        static_cast<long long>(o.model.d_model), static_cast<long long>(o.model.n_head),
        static_cast<long long>(o.model.kv_heads()), o.device.str().c_str(), dtype_name(o.dtype));
    if (o.dtype == DType::BF16)
      std::printf("mixed precision: bf16 compute, f32 master weights, gradients and Adam states\n");
    if (start_step > 0)
      std::printf("resumed from %s at step %lld\n", o.resume.c_str(),
                  static_cast<long long>(start_step));
    if (reducer)
      std::printf(
          "data parallel: %d ranks (%s), %lld sequences per rank per micro-batch, %d gradient "
          "buckets of <= %g MB, optimizer states %s\n",
          world, o.comm->name().c_str(), static_cast<long long>(o.batch / o.grad_accum / world),
          reducer->num_buckets(), o.bucket_mb, o.zero ? "sharded (ZeRO-1)" : "replicated");
  }

  std::ofstream log;
  if (!o.log.empty() && leader) {
    log.open(o.log, start_step > 0 ? std::ios::app : std::ios::trunc);
    FG_CHECK(log.good(), "--log ", o.log, ": cannot open for writing");
  }

  auto evaluate = [&]() {
    ag::NoGradGuard no_grad;
    double total = 0;
    for (int64_t i = rank; i < o.eval_batches; i += world) {  // the ranks share the batches
      Batch b = data.val(i, o.batch / o.grad_accum, o.seq);
      total += model.loss(b.inputs, b.targets, Recompute::None).data().item();
    }
    if (o.comm) {
      Tensor t = Tensor::from_vector({total}, {1}, DType::F64, o.comm->device());
      o.comm->all_reduce(t, dist::ReduceOp::Sum);
      total = t.item();
    }
    return total / static_cast<double>(o.eval_batches);
  };

  TrainResult result;
  result.entropy_rate = data.entropy_rate;
  result.best_val_loss = INFINITY;
  const int64_t micro = o.batch / o.grad_accum / world;  // sequences per rank per micro-batch
  const int64_t tokens_per_step = o.batch * o.seq;
  int64_t bad_in_row = 0;
  TrainStep runner(o, model, opt, reducer.get(), micro);
  auto stage = [&](int64_t step) {
    std::vector<Batch> batches;
    for (int m = 0; m < o.grad_accum; ++m) batches.push_back(data.train(step, rank, world, micro, o.seq, m));
    runner.stage(batches, lr_at(sched, step));
  };
  if (start_step < o.steps) {
    stage(start_step);
    result.memory = runner.dry_run();
    result.cuda_graph = runner.uses_graph();
    if (leader) print_memory(result.memory, runner.uses_graph());
  }
  auto t_start = Clock::now();
  double train_seconds = 0;

  for (int64_t step = start_step; step < o.steps; ++step) {
    auto t0 = Clock::now();
    double lr = lr_at(sched, step);
    runner.launch();
    if (step + 1 < o.steps) stage(step + 1);  // the next batch is made while this step runs
    StepStats st = runner.wait();
    const double loss = st.loss, grad_norm = st.grad_norm;
    const bool finite = st.finite;
    if (finite) {
      bad_in_row = 0;
    } else {
      result.skipped_steps += 1;
      FG_CHECK(++bad_in_row < o.max_bad_steps, "training diverged: ", bad_in_row,
               " non-finite steps in a row at step ", step, " (loss ", loss, ", grad norm ",
               grad_norm, "); lower --lr or raise --clip");
    }
    tokens_seen += tokens_per_step;
    double dt = seconds_since(t0);
    train_seconds += dt;
    result.losses.push_back(loss);
    result.step_ms.push_back(dt * 1e3);

    bool last = step + 1 == o.steps;
    bool eval_now = o.eval_every > 0 && ((step + 1) % o.eval_every == 0 || last);
    double val = NAN;
    if (eval_now) {
      val = evaluate();
      result.final_val_loss = val;
      if (val < result.best_val_loss) {
        result.best_val_loss = val;
        result.best_val_step = step + 1;
      }
    }
    double tps = static_cast<double>(tokens_per_step) / dt;
    if (log.is_open()) {
      nlohmann::json j = {{"step", step + 1},       {"loss", loss},
                          {"lr", lr},               {"grad_norm", grad_norm},
                          {"tokens_per_s", tps},    {"ms_per_step", dt * 1e3}};
      if (eval_now) j["val_loss"] = val;
      if (!finite) j["skipped"] = true;
      log << j.dump() << "\n";
      log.flush();
    }
    if (show) {
      double eta = train_seconds / static_cast<double>(step + 1 - start_step) *
                   static_cast<double>(o.steps - step - 1);
      std::string line = str_cat("step ", step + 1, "/", o.steps, " loss ", loss, " lr ", lr,
                                 " ", static_cast<int64_t>(tps), " tok/s eta ", format_eta(eta));
      if (eval_now) line += str_cat(" val ", val);
      if (!finite) line += " (skipped: non-finite)";
      if (tty) {
        int width = 30, done = static_cast<int>(width * (step + 1) / o.steps);
        std::printf("\r[%s%s] %s\033[K", std::string(done, '#').c_str(),
                    std::string(width - done, '.').c_str(), line.c_str());
        if (eval_now) std::printf("\n");
        std::fflush(stdout);
      } else if (eval_now || step == start_step || (step + 1) % 50 == 0) {
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
      }
    }
    if (!o.save.empty() && o.save_every > 0 && (step + 1) % o.save_every == 0 && !last)
      save(o, o.save, model, opt, data, step + 1, tokens_seen, sched);
  }
  if (!o.save.empty()) save(o, o.save, model, opt, data, o.steps, tokens_seen, sched);

  result.seconds = seconds_since(t_start);
  int64_t trained = o.steps - start_step;
  result.tokens_per_s = train_seconds > 0 ? static_cast<double>(trained * tokens_per_step) / train_seconds : 0;
  if (show) {
    std::printf("done: %lld steps in %.1f s, %.0f tokens/s", static_cast<long long>(trained),
                result.seconds, result.tokens_per_s);
    if (!result.losses.empty()) std::printf(", final loss %.4f", result.losses.back());
    if (result.best_val_step >= 0)
      std::printf(", best val loss %.4f at step %lld", result.best_val_loss,
                  static_cast<long long>(result.best_val_step));
    if (result.entropy_rate >= 0)
      std::printf(", entropy rate %.4f (gap %.4f)", result.entropy_rate,
                  result.final_val_loss - result.entropy_rate);
    if (result.skipped_steps) std::printf(", %lld skipped", static_cast<long long>(result.skipped_steps));
    if (!o.save.empty()) std::printf(", saved %s", o.save.c_str());
    std::printf("\n");
  }
  return result;
}

}  // namespace fg::trainer
