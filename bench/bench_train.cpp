// bench_train: whole-model training throughput through the real trainer
// (fg::trainer::train): median ms/step, tokens/s, MFU and memory of the baby,
// gpt2 and seed models, with and without activation recomputation; --profile
// adds per-kernel GPU time from CUPTI. Markdown on stdout (rows as runs finish),
// progress on stderr, --json FILE for scripts (bench/compare_torch.py train).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "bench/common/kernel_profile.h"
#include "core/cuda_utils.h"
#include "trainer/loop.h"

namespace {

using fg::bench::KernelProfile;
using fg::bench::KernelProfiler;
using fg::trainer::GPTConfig;

constexpr double kDefaultPeakTflops = 989.4;  // dense bf16 without sparsity, H100/H200 SXM
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr int kTopKernels = 40;
constexpr int kTopGaps = 8;  // idle gaps listed, by their total

const char* const kFooter =
    "MFU = (6 * N * B * T + 6 * B * T^2 * D * L) / (median step seconds * peak FLOP/s).\n"
    "  N: parameters that take part in matmuls = all parameters except the token\n"
    "     embedding table when it is not tied to the LM head (a gather, not a matmul);\n"
    "     the norm weights and the QKV bias are included (< 0.1% of N here).\n"
    "  6 * B * T^2 * D * L: causal attention, forward 4*B*T^2*D*L/2 (QK^T and PV, half\n"
    "     the scores masked), times 3 for forward + backward.\n"
    "  Model FLOPs: what recomputation runs again is not counted.\n"
    "Models: baby (6 layers, 6 heads, d_model 384, seq 256, batch 64, char vocab 65),\n"
    "  gpt2 (12, 12, 768, seq 1024, batch 16, byte data, vocab 50304), seed (4, 32, 4096,\n"
    "  seq 4096, batch 1, byte data, vocab 32000, qkv bias), tiny (2, 2, 64, seq 64,\n"
    "  batch 4, char vocab 65: a CPU smoke test).";

struct ModelSpec {
  std::string name;
  GPTConfig cfg;
  int64_t batch = 0, seq = 0;
  std::string tokenizer;
};

ModelSpec model_spec(const std::string& name) {
  ModelSpec m;
  m.name = name;
  auto shape = [&](int64_t L, int64_t H, int64_t D, int64_t T, int64_t B, int64_t V,
                   const char* tokenizer) {
    m.cfg.n_layer = L;
    m.cfg.n_head = H;
    m.cfg.d_model = D;
    m.cfg.max_seq_len = m.seq = T;
    m.batch = B;
    m.cfg.vocab_size = V;
    m.tokenizer = tokenizer;
  };
  if (name == "baby") {
    shape(6, 6, 384, 256, 64, 65, "char");  // tinyshakespeare's characters are exactly 65
  } else if (name == "gpt2") {
    shape(12, 12, 768, 1024, 16, 50304, "byte");
  } else if (name == "seed") {
    shape(4, 32, 4096, 4096, 1, 32000, "byte");
    m.cfg.qkv_bias = true;
  } else if (name == "tiny") {
    shape(2, 2, 64, 64, 4, 65, "char");
  } else {
    FG_THROW("--models: unknown model '", name, "' (baby, gpt2, seed or tiny)");
  }
  return m;
}

struct ParamCounts {
  int64_t total = 0;
  int64_t matmul = 0;  // N of the MFU formula (see kFooter)
};

ParamCounts count_params(const GPTConfig& cfg) {
  ParamCounts c;
  for (const fg::trainer::ParamSpec& p : fg::trainer::parameter_table(cfg)) {
    const int64_t n = fg::shape_numel(p.shape);
    c.total += n;
    if (p.name != "tok_embeddings.weight" || cfg.tie_embeddings) c.matmul += n;
  }
  return c;
}

// Model FLOPs of one training step (kFooter).
double step_flops(const ModelSpec& m, const ParamCounts& p) {
  const double B = static_cast<double>(m.batch), T = static_cast<double>(m.seq);
  return 6.0 * static_cast<double>(p.matmul) * B * T +
         6.0 * B * T * T * static_cast<double>(m.cfg.d_model * m.cfg.n_layer);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

std::string gib(int64_t bytes) {
  return fmt("%.2f", static_cast<double>(bytes) / kGiB);
}

// Kernel names may hold '|' (operator|) and errors newlines; either would break a table row.
std::string md_cell(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|')
      out += "\\|";
    else
      out += c == '\n' ? ' ' : c;
  }
  return out;
}

// train() prints its data and model lines on stdout; they go to stderr so that
// stdout stays the markdown report.
class StdoutToStderr {
 public:
  StdoutToStderr() {
    std::cout.flush();
    std::fflush(stdout);
    saved_ = dup(STDOUT_FILENO);
    dup2(STDERR_FILENO, STDOUT_FILENO);
  }
  ~StdoutToStderr() {
    std::fflush(stdout);
    dup2(saved_, STDOUT_FILENO);
    close(saved_);
  }
  StdoutToStderr(const StdoutToStderr&) = delete;
  StdoutToStderr& operator=(const StdoutToStderr&) = delete;

 private:
  int saved_ = -1;
};

// The device's name, and the high-water mark of the bytes its memory pool
// reserved from the driver (like PyTorch's max_memory_reserved): it shows what
// the pool's caching and fragmentation add to the live bytes.
#ifdef FG_CUDA
std::string device_name(fg::Device d) {
  if (d.is_cpu()) return "cpu";
  cudaDeviceProp prop{};
  FG_CUDA_CHECK(cudaGetDeviceProperties(&prop, d.index));
  return prop.name;
}
cudaMemPool_t memory_pool(fg::Device d) {
  cudaMemPool_t pool;
  FG_CUDA_CHECK(cudaDeviceGetMemPool(&pool, d.index));
  return pool;
}
// Hands the pool's free blocks back (the previous run's) and restarts the mark.
void reset_reserved_peak(fg::Device d) {
  FG_CUDA_CHECK(cudaDeviceSynchronize());
  cudaMemPool_t pool = memory_pool(d);
  FG_CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
  uint64_t zero = 0;
  FG_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero));
}
int64_t reserved_peak(fg::Device d) {
  uint64_t high = 0;
  FG_CUDA_CHECK(cudaMemPoolGetAttribute(memory_pool(d), cudaMemPoolAttrReservedMemHigh, &high));
  return static_cast<int64_t>(high);
}
#else
std::string device_name(fg::Device) {
  return "cpu";
}
void reset_reserved_peak(fg::Device) {}
int64_t reserved_peak(fg::Device) {
  return 0;
}
#endif

struct Settings {
  std::vector<std::string> models = {"baby", "gpt2", "seed"};
  std::vector<std::string> recompute = {"none", "full"};
  int64_t steps = 30;
  int64_t warmup = 5;
  std::string device = "auto", dtype = "auto";
  bool no_cuda_graph = false;
  bool no_batch_weight_grads = false;
  std::string data = "../shared/data/tinyshakespeare.txt";
  std::string json;
  bool profile = false;
  double peak_tflops = kDefaultPeakTflops;
  std::string commit;
};

struct Run {
  ModelSpec model;
  std::string recompute;
  ParamCounts params;
  fg::trainer::TrainResult result;
  double ms = 0, tokens_per_s = 0, mfu = 0;
  double slowest_ms = 0;      // the slowest timed step: what the median would hide
  int64_t reserved_peak = 0;  // CUDA only
  std::optional<KernelProfile> profile;
  std::string error;  // non-empty: the run failed with this
};

// One training run: `steps` steps of the real trainer; the first `warmup`
// step times are dropped (allocation, cuBLASLt heuristics, CUDA-graph capture).
Run run_one(const Settings& s, const fg::trainer::TrainOptions& base, const ModelSpec& m,
            const std::string& recompute, std::string* profile_unavailable) {
  Run r;
  r.model = m;
  r.recompute = recompute;
  r.params = count_params(m.cfg);
  fg::trainer::TrainOptions o = base;
  o.model = m.cfg;
  o.tokenizer = m.tokenizer;
  o.batch = m.batch;
  o.seq = m.seq;
  o.recompute = fg::trainer::parse_recompute(recompute);

  if (o.device.is_cuda()) reset_reserved_peak(o.device);
  // Tracing covers the whole run (it cannot be switched on from outside train()
  // between steps); finish() keeps the records of the timed steps only.
  std::optional<KernelProfiler> profiler;
  if (s.profile && profile_unavailable->empty()) {  // after one failure, no more tries
    try {
      profiler.emplace();
    } catch (const std::exception& e) {
      *profile_unavailable = e.what();
      std::cerr << "profile: CUPTI unavailable: " << e.what() << std::endl;
    }
  }
  {
    StdoutToStderr redirect;
    r.result = fg::trainer::train(o);
  }

  const std::vector<double>& step_ms = r.result.step_ms;
  FG_CHECK(static_cast<int64_t>(step_ms.size()) == s.steps, "the trainer reported ", step_ms.size(),
           " step times for ", s.steps, " steps (TrainResult::step_ms)");
  std::vector<double> timed(step_ms.begin() + s.warmup, step_ms.end());
  r.ms = median(timed);
  r.slowest_ms = *std::max_element(timed.begin(), timed.end());
  r.tokens_per_s = static_cast<double>(m.batch * m.seq) / (r.ms * 1e-3);
  r.mfu = step_flops(m, r.params) / (r.ms * 1e-3) / (s.peak_tflops * 1e12);
  if (o.device.is_cuda()) r.reserved_peak = reserved_peak(o.device);
  if (profiler) {
    double timed_ms = 0;
    for (double t : timed) timed_ms += t;
    r.profile = profiler->finish(timed_ms);
  }
  return r;
}

std::string profile_section(const Run& r, int64_t timed_steps) {
  const KernelProfile& p = *r.profile;
  const double n = static_cast<double>(timed_steps);
  const double kernel = p.kernel_ms / n, busy = p.busy_ms / n;
  std::ostringstream os;
  os << "\n### Kernels: " << r.model.name << ", recompute " << r.recompute << "\n\n"
     << "Per step (CUPTI, the last " << timed_steps << " steps): " << fmt("%.2f", kernel)
     << " ms of GPU activity in " << static_cast<int64_t>(static_cast<double>(p.launches) / n)
     << " kernels/copies; the GPU is busy " << fmt("%.2f", busy) << " ms of the "
     << fmt("%.2f", r.ms) << " ms wall: " << fmt("%.2f", r.ms - busy) << " ms ("
     << fmt("%.1f", 100.0 * (r.ms - busy) / r.ms) << "%) launch and idle gap.";
  if (p.dropped) os << " CUPTI dropped " << p.dropped << " records.";
  os << "\n\n| kernel | calls | total ms | share | mean us |\n|---|---:|---:|---:|---:|\n";
  for (size_t i = 0; i < p.kernels.size() && i < static_cast<size_t>(kTopKernels); ++i) {
    const fg::bench::KernelStat& k = p.kernels[i];
    os << "| `" << md_cell(k.name) << "` | " << k.calls << " | " << fmt("%.2f", k.total_ms) << " | "
       << fmt("%.1f%%", 100.0 * k.total_ms / p.kernel_ms) << " | "
       << fmt("%.1f", 1e3 * k.total_ms / static_cast<double>(k.calls)) << " |\n";
  }
  if (p.kernels.size() > static_cast<size_t>(kTopKernels))
    os << "\n(" << p.kernels.size() - kTopKernels << " more kernels not shown)\n";
  if (!p.gaps.empty()) {
    os << "\nWhere the GPU idles (no kernel or copy on any stream), by the records around "
          "each gap. Tracing lengthens gaps around memsets and graph launches: check a saving "
          "on unprofiled runs.\n\n| ends before it | starts it | gaps | total ms | mean us "
          "|\n|---|---|---:|---:|---:|\n";
    for (size_t i = 0; i < p.gaps.size() && i < static_cast<size_t>(kTopGaps); ++i) {
      const fg::bench::GapStat& g = p.gaps[i];
      os << "| `" << md_cell(g.before) << "` | `" << md_cell(g.after) << "` | " << g.count << " | "
         << fmt("%.3f", g.total_ms) << " | "
         << fmt("%.1f", 1e3 * g.total_ms / static_cast<double>(g.count)) << " |\n";
    }
  }
  return os.str();
}

using Json = nlohmann::ordered_json;  // keys in the order written

Json run_json(const Run& r, const Settings& s, const fg::trainer::TrainOptions& base,
              const std::string& gpu) {
  const fg::trainer::MemorySummary& mem = r.result.memory;
  Json j = {
      {"model", r.model.name},
      {"recompute", r.recompute},
      {"cuda_graph", base.cuda_graph && base.device.is_cuda()},
      {"batch_weight_grads", base.batch_weight_grads && r.recompute == "none"},
      {"device", base.device.str()},
      {"dtype", fg::dtype_name(base.dtype)},
      {"batch", r.model.batch},
      {"seq", r.model.seq},
      {"n_layer", r.model.cfg.n_layer},
      {"n_head", r.model.cfg.n_head},
      {"d_model", r.model.cfg.d_model},
      {"vocab_size", r.model.cfg.vocab_size},
      {"params", r.params.total},
      {"matmul_params", r.params.matmul},
      {"flops_per_step", step_flops(r.model, r.params)},
      {"peak_tflops", s.peak_tflops},
      {"steps", s.steps},
      {"warmup", s.warmup},
      {"step_ms", r.result.step_ms},
      {"ms_per_step", r.ms},
      {"slowest_ms", r.slowest_ms},
      {"tokens_per_s", r.tokens_per_s},
      {"mfu", r.mfu},
      {"peak_bytes", mem.peak},
      {"memory",
       {{"params", mem.params},
        {"grads", mem.grads},
        {"optimizer", mem.optimizer},
        {"activations", mem.activations},
        {"workspace", mem.workspace},
        {"peak", mem.peak}}},
      {"gpu", gpu},
      {"profiled", r.profile.has_value()},
  };
  if (base.device.is_cuda()) j["memory"]["pool_reserved_peak"] = r.reserved_peak;
  if (!s.commit.empty()) j["commit"] = s.commit;
  if (r.profile) {
    const double n = static_cast<double>(s.steps - s.warmup);
    Json top = Json::array();
    for (size_t i = 0; i < r.profile->kernels.size() && i < static_cast<size_t>(kTopKernels); ++i)
      top.push_back({{"name", r.profile->kernels[i].name},
                     {"calls", r.profile->kernels[i].calls},
                     {"total_ms", r.profile->kernels[i].total_ms}});
    j["profile"] = {{"kernel_ms_per_step", r.profile->kernel_ms / n},
                    {"busy_ms_per_step", r.profile->busy_ms / n},
                    {"launches_per_step", static_cast<double>(r.profile->launches) / n},
                    {"kernels", top}};
  }
  return j;
}

void write_json(const std::string& path, const Json& runs) {
  std::ofstream f(path);
  FG_CHECK(f.good(), "--json ", path, ": cannot open for writing");
  f << runs.dump(2) << "\n";
  FG_CHECK(f.good(), "--json ", path, ": write failed");
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  CLI::App app{
      "bench_train: training throughput (ms/step, tokens/s, MFU, memory) of the baby, gpt2 and "
      "seed models through the real trainer"};
  app.footer(kFooter);
  app.add_option("--models", s.models, "comma-separated: baby, gpt2, seed (tiny: CPU smoke test)")
      ->delimiter(',')
      ->check(CLI::IsMember({"baby", "gpt2", "seed", "tiny"}))
      ->capture_default_str();
  app.add_option("--recompute", s.recompute, "comma-separated: none, attn, full")
      ->delimiter(',')
      ->check(CLI::IsMember({"none", "attn", "full"}))
      ->capture_default_str();
  app.add_option("--steps", s.steps, "training steps per run")->capture_default_str();
  app.add_option("--warmup", s.warmup, "first steps left out of the median")->capture_default_str();
  app.add_option("--device", s.device, "cpu, cuda, cuda:N or auto (the GPU when present)")
      ->capture_default_str();
  app.add_option("--dtype", s.dtype,
                 "compute dtype: f32, f64, bf16 (GPU, f32 masters) or auto (bf16 on a GPU, f32 "
                 "on the CPU)")
      ->capture_default_str();
  app.add_flag("--no-cuda-graph", s.no_cuda_graph, "run steps eagerly (no CUDA-graph replay)");
  app.add_flag("--no-batch-weight-grads", s.no_batch_weight_grads,
               "run each weight-gradient product where backward reaches it (train_gpt's flag)");
  app.add_option("--data", s.data, "the tinyshakespeare text file")->capture_default_str();
  app.add_option("--json", s.json, "write the runs as a JSON array (rewritten after each run)");
  app.add_flag("--profile", s.profile,
               "CUDA: per-kernel GPU time of the timed steps from CUPTI (the timings then "
               "include CUPTI's tracing: 3-5% on an H200)");
  app.add_option("--peak-tflops", s.peak_tflops, "peak dense FLOP/s for MFU, in TFLOP/s")
      ->capture_default_str();
  app.add_option("--commit", s.commit, "commit hash recorded in the report and the JSON");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "bench_train: error: " << e.what() << " (see --help)\n";
    return 2;
  }

  try {
    FG_CHECK(s.warmup >= 0 && s.warmup < s.steps, "--warmup (", s.warmup,
             ") must be at least 0 and less than --steps (", s.steps, ")");
    FG_CHECK(s.peak_tflops > 0, "--peak-tflops must be > 0, got ", s.peak_tflops);
    FG_CHECK(std::filesystem::is_regular_file(s.data), "--data ", s.data,
             ": no such file (the tinyshakespeare text)");
    fg::trainer::TrainOptions base;
    if (s.device == "auto") {
      base.device = fg::cuda_available() ? fg::Device::cuda(0) : fg::Device::cpu();
    } else {
      base.device = fg::parse_device(s.device);
      FG_CHECK(!base.device.is_cuda() || fg::cuda_available(), "--device ", s.device,
               ": no CUDA GPU is available (or this build has FG_CUDA=OFF)");
    }
    if (s.dtype == "auto") {
      const bool bf16 =
          base.device.is_cuda() && fg::cuda_compute_capability(base.device.index) >= 80;
      base.dtype = bf16 ? fg::DType::BF16 : fg::DType::F32;
    } else {
      base.dtype = fg::dtype_from_name(s.dtype);
      FG_CHECK(base.dtype != fg::DType::I32, "--dtype: expected f32, f64 or bf16, got '", s.dtype,
               "'");
    }
    base.data = s.data;
    base.steps = s.steps;
    base.schedule.lr = base.schedule.min_lr = 1e-4;  // constant: the schedule is not measured
    base.schedule.warmup_steps = 0;
    base.schedule.total_steps = s.steps;
    base.clip = 1.0;
    base.eval_every = 0;
    base.progress = false;
    base.cuda_graph = !s.no_cuda_graph;
    base.batch_weight_grads = !s.no_batch_weight_grads;
    if (s.profile && !base.device.is_cuda()) {
      std::cerr << "bench_train: --profile traces GPU kernels; ignored on " << base.device.str()
                << "\n";
      s.profile = false;
    }

    const std::string gpu = device_name(base.device);
    char date[32];
    std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
    std::vector<ModelSpec> models;
    for (const std::string& name : s.models) models.push_back(model_spec(name));

    std::cout << "# Training throughput (bench_train)\n\n"
              << (base.device.is_cuda() ? "GPU: " + gpu + " (" + base.device.str() + ")"
                                        : "Device: cpu")
              << ", " << fg::dtype_name(base.dtype) << " compute"
              << (base.dtype == fg::DType::BF16 ? " with f32 master weights" : "")
              << ", CUDA graph " << (base.cuda_graph && base.device.is_cuda() ? "on" : "off")
              << ", weight gradients " << (base.batch_weight_grads ? "batched" : "one by one")
              << ", commit " << (s.commit.empty() ? "unknown" : s.commit) << ", " << date << ". "
              << s.steps << " steps per run; ms/step is the median of the last "
              << s.steps - s.warmup << "; tokens/s = batch * seq / that; slowest step: the "
              << "largest of them (a median hides a few slow steps)."
              << (s.profile ? " Profiled runs: the times include CUPTI's tracing (3-5% on an H200)."
                            : "")
              << "\n\n"
              << "MFU = (6 * N * B * T + 6 * B * T^2 * D * L) / (step time * "
              << fmt("%.1f", s.peak_tflops)
              << " TFLOP/s): N = parameters in matmuls (all but the untied token embedding), "
                 "causal attention at 6 * B * T^2 * D * L; recomputation not counted. Peak "
                 "memory: the most live bytes during a step.\n\n";
    for (const ModelSpec& m : models) {
      const ParamCounts p = count_params(m.cfg);
      std::cout << "- " << m.name << ": " << m.cfg.n_layer << " layers, " << m.cfg.n_head
                << " heads, d_model " << m.cfg.d_model << ", seq " << m.seq << ", batch " << m.batch
                << ", vocab " << m.cfg.vocab_size << (m.cfg.qkv_bias ? ", qkv bias" : "") << "; "
                << fmt("%.1f", static_cast<double>(p.total) * 1e-6)
                << "M parameters, N = " << fmt("%.1f", static_cast<double>(p.matmul) * 1e-6)
                << "M\n";
    }
    std::cout
        << "\n| model | recompute | ms/step | tokens/s | MFU | peak memory GiB | slowest step "
           "ms |\n"
        << "|---|---|---:|---:|---:|---:|---:|\n"
        << std::flush;

    std::vector<Run> runs;
    Json json_runs = Json::array();
    int failed = 0;
    std::string profile_unavailable;  // why CUPTI could not trace, once it failed
    const size_t total = models.size() * s.recompute.size();
    for (const ModelSpec& m : models) {
      for (const std::string& rc : s.recompute) {
        std::cerr << "bench_train: [" << runs.size() + 1 << "/" << total << "] " << m.name
                  << " recompute " << rc << ": " << s.steps << " steps of " << m.batch << " x "
                  << m.seq << " tokens on " << base.device.str() << std::endl;
        const std::time_t t0 = std::time(nullptr);
        Run r;
        try {
          r = run_one(s, base, m, rc, &profile_unavailable);
        } catch (const std::exception& e) {
          r.model = m;
          r.recompute = rc;
          r.error = e.what();
          ++failed;
        }
        if (!r.error.empty()) {
          std::cerr << "bench_train: " << m.name << " recompute " << rc << " failed: " << r.error
                    << std::endl;
          std::cout << "| " << m.name << " | " << rc << " | failed: " << md_cell(r.error)
                    << " | | | |\n";
          json_runs.push_back({{"model", m.name},
                               {"recompute", rc},
                               {"batch", m.batch},
                               {"seq", m.seq},
                               {"gpu", gpu},
                               {"error", r.error}});
        } else {
          std::cerr << "bench_train: " << m.name << " recompute " << rc << ": " << fmt("%.2f", r.ms)
                    << " ms/step, " << fmt("%.0f", r.tokens_per_s) << " tokens/s, MFU "
                    << fmt("%.1f%%", 100 * r.mfu) << ", peak " << gib(r.result.memory.peak)
                    << " GiB (" << std::time(nullptr) - t0 << " s)" << std::endl;
          std::cout << "| " << m.name << " | " << rc << " | " << fmt("%.2f", r.ms) << " | "
                    << fmt("%.0f", r.tokens_per_s) << " | " << fmt("%.1f%%", 100 * r.mfu) << " | "
                    << gib(r.result.memory.peak) << " | " << fmt("%.2f", r.slowest_ms) << " |\n";
          json_runs.push_back(run_json(r, s, base, gpu));
        }
        if (!s.json.empty()) write_json(s.json, json_runs);  // a timeout keeps what finished
        std::cout << std::flush;
        runs.push_back(std::move(r));
      }
    }

    const bool cuda = base.device.is_cuda();
    std::cout << "\n## Memory (GiB)\n\n"
              << "Live bytes (Storage's count) as the trainer reports them"
              << (cuda ? "; pool reserved: the CUDA memory pool's high-water mark" : "")
              << ".\n\n| model | recompute | params | grads | optimizer | activations | "
                 "workspace | peak |"
              << (cuda ? " pool reserved |" : "") << "\n|---|---|---:|---:|---:|---:|---:|---:|"
              << (cuda ? "---:|" : "") << "\n";
    for (const Run& r : runs) {
      if (!r.error.empty()) continue;
      const fg::trainer::MemorySummary& mem = r.result.memory;
      std::cout << "| " << r.model.name << " | " << r.recompute << " | " << gib(mem.params) << " | "
                << gib(mem.grads) << " | " << gib(mem.optimizer) << " | " << gib(mem.activations)
                << " | " << gib(mem.workspace) << " | " << gib(mem.peak) << " |"
                << (cuda ? " " + gib(r.reserved_peak) + " |" : "") << "\n";
    }
    if (s.profile) std::cout << "\n## Per-kernel GPU time\n";
    if (!profile_unavailable.empty())
      std::cout << "\nprofile: CUPTI unavailable: " << md_cell(profile_unavailable) << "\n";
    for (const Run& r : runs)
      if (r.profile) std::cout << profile_section(r, s.steps - s.warmup);
    std::cout << std::flush;
    return failed ? 1 : 0;
  } catch (const std::exception& e) {
    std::cout << std::flush;
    std::cerr << "bench_train: error: " << e.what() << "\n";
    return 1;
  }
}
