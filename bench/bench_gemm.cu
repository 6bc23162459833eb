// GEMM benchmark: the Hopper GEMM (ops/gemm/gemm_hopper.cuh through gemm_hopper_bf16, bf16
// out), in each of its schedules, against cuBLASLt (fg::ops::gemm) at the seed and GPT-2
// projection shapes (forward, and the MLP's backward dx = dy @ w_down), c = a (M, K) @ b^T with
// b (N, K), or with --b-layout kn b^T given as (K, N), measured in the same run, and the
// largest difference between each result and cuBLASLt's. cuBLASLt and the schedules are timed
// interleaved (bench/common/gpu_timer.cuh), so a clock drop under load weighs on each alike. The
// operands rotate over enough copies to exceed L2 twice, so every call reads them from device
// memory. Then the MLP's backward at the three models' shapes: dgu = swiglu_backward(dy @
// w_down, gu) as our one product with SwiGLU's backward in its epilogue (ops::
// swiglu_down_backward) against cuBLASLt's dx product and the separate pass. Prints markdown;
// --out FILE writes it too, shape by shape (a hang leaves the shapes before it).
//   bench_gemm [--out FILE] [--commit HASH] [--reps N] [--warmup N] [--bias]
//              [--schedules cooperative,pingpong,...] [--b-layout nk|kn]
//              [--operands randn|weights|zeros]
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bench/common/gpu_timer.cuh"
#include "core/cuda_utils.h"
#include "core/tensor.h"
#include "ops/gemm/gemm.h"
#include "ops/gemm/gemm_hopper.h"
#include "ops/swiglu/swiglu.h"

using fg::Device;
using fg::DType;
using fg::Tensor;
using fg::ops::detail::GemmSchedule;

namespace {

struct GemmShape {
  const char* name;
  int64_t M, N, K;
};

// The MLP's backward: rows M = B * T, D = d_model, F = d_ff.
struct MlpShape {
  const char* name;
  int64_t M, D, F;
};
const std::vector<MlpShape> kMlpShapes = {
    {"baby", 16384, 384, 1024}, {"GPT-2", 16384, 768, 2048}, {"seed", 4096, 4096, 10944}};

const std::vector<GemmShape> kShapes = {
    {"seed QKV", 8192, 12288, 4096},         {"seed MLP up", 4096, 22016, 4096},
    {"seed MLP down", 4096, 4096, 11008},    {"GPT-2 qkv", 16384, 2304, 768},
    {"GPT-2 gate|up", 16384, 4096, 768},     {"GPT-2 down", 16384, 768, 2048},
    {"GPT-2 out-proj", 16384, 768, 768},     {"seed MLP down dx", 4096, 10944, 4096},
    {"GPT-2 MLP down dx", 16384, 2048, 768}, {"GPT-2 LM head", 8192, 50304, 768},
    {"seed LM head", 2048, 32000, 4096},
};

// max |x - y| / max |y| and ||x - y|| / ||y|| of two bf16 GPU matrices, on the host.
std::pair<double, double> differences(const Tensor& x, const Tensor& y) {
  const Tensor hx = x.to(Device::cpu()), hy = y.to(Device::cpu());
  const fg::bf16 *px = hx.data<fg::bf16>(), *py = hy.data<fg::bf16>();
  double max_diff = 0, max_ref = 0, num = 0, den = 0;
  for (int64_t i = 0; i < hx.numel(); ++i) {
    const double a = fg::bf16_to_float(px[i]), b = fg::bf16_to_float(py[i]);
    if (!std::isfinite(a) || !std::isfinite(b)) return {NAN, NAN};
    max_diff = std::max(max_diff, std::abs(a - b));
    max_ref = std::max(max_ref, std::abs(b));
    num += (a - b) * (a - b);
    den += b * b;
  }
  return {max_diff / std::max(max_ref, 1e-30), std::sqrt(num / std::max(den, 1e-30))};
}

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_path, commit = "unknown";
  int reps = 50, warmup = 5;
  bool with_bias = false;
  std::vector<std::string> schedule_names;
  for (GemmSchedule s : fg::ops::detail::kGemmSchedules)
    schedule_names.push_back(fg::ops::detail::gemm_schedule_name(s));
  CLI::App app{
      "bench_gemm: the Hopper bf16 GEMM against cuBLASLt at the model's projection shapes"};
  app.add_option("--out", out_path, "also write the markdown table to this file");
  app.add_option("--commit", commit, "commit hash recorded in the table")->capture_default_str();
  app.add_option("--reps", reps, "timed calls per measurement (the median is kept)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--warmup", warmup, "untimed calls first")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  app.add_flag("--bias", with_bias, "add a bias (N) in both epilogues");
  std::string b_layout_name = "nk";
  app.add_option("--b-layout", b_layout_name,
                 "b's layout: nk, (N, K) rows (x @ w^T), or kn, (K, N) rows (dy @ w; the "
                 "one-block schedules only)")
      ->check(CLI::IsMember({"nk", "kn"}))
      ->capture_default_str();
  app.add_option("--schedules", schedule_names, "the Hopper GEMM's schedules to time")
      ->delimiter(',')
      ->capture_default_str();
  // At the power limit a GEMM's clock depends on how many bits its operands toggle, so the
  // operands decide which kernel's limit is measured: zeros leave the pipelines' own.
  std::string operands = "randn";
  app.add_option("--operands", operands,
                 "randn: a ~ N(0, 1), b ~ N(0, 1/K); weights: b ~ N(0, 0.02^2), as a model's "
                 "initial weights; zeros: both zero (no bits toggle: each kernel at its own "
                 "pipeline limit, not the power limit)")
      ->check(CLI::IsMember({"randn", "weights", "zeros"}))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "bench_gemm: error: " << e.what() << " (see --help)\n";
    return 2;
  }

  try {
    FG_CHECK(fg::cuda_available(), "bench_gemm needs a CUDA device");
    FG_CHECK(fg::ops::detail::gemm_hopper_available(),
             "bench_gemm needs a Hopper GPU and a build for sm_90a");
    const Device gpu = Device::cuda(0);
    cudaDeviceProp prop{};
    FG_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    char date[32];
    std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
    const int64_t rotate_bytes = 2 * static_cast<int64_t>(prop.l2CacheSize);
    const fg::bench::GpuTimer timer(warmup, reps);
    const bool kn = b_layout_name == "kn";
    const auto b_layout = kn ? fg::ops::detail::BLayout::kKN : fg::ops::detail::BLayout::kNK;

    std::vector<GemmSchedule> schedules;
    for (const std::string& name : schedule_names) {
      const auto s = fg::ops::detail::gemm_schedule_from_name(name);
      FG_CHECK(s.has_value(), "--schedules: no schedule named '", name, "'");
      schedules.push_back(*s);
    }

    std::ofstream file;
    if (!out_path.empty()) {
      file.open(out_path);
      FG_CHECK(file.good(), "cannot write ", out_path);
    }
    std::ostringstream md;
    const auto emit = [&](const std::string& text) {  // to the table and, flushed, the file
      md << text;
      if (file.is_open()) file << text << std::flush;
    };
    std::ostringstream head;
    head << "# bf16 GEMM: Hopper kernel vs cuBLASLt\n\n"
         << "GPU: " << prop.name << ", commit " << commit << ", " << date
         << ". c = a (M, K) @ b^T, " << (kn ? "b^T given as (K, N)" : "b (N, K)") << ", operands "
         << operands << (with_bias ? " + bias" : "") << ", bf16 in and out, fp32 sums. Median "
         << "of " << reps << " calls (CUDA events) after " << warmup << ", cuBLASLt and every "
         << "schedule interleaved call by call; operands rotate over "
         << "copies totalling at least " << rotate_bytes / (1 << 20) << " MB (2x L2). cuBLASLt "
         << "through fg::ops::gemm (its heuristic's first algorithm). schedule: the Hopper "
         << "kernel's (GemmSchedule). speed = cuBLASLt ms / ours ms (> 1: ours faster). max diff = "
            "max |ours - cuBLASLt| / max |cuBLASLt|; rel = ||ours - "
         << "cuBLASLt|| / ||cuBLASLt||.\n\n"
         << "| shape | M | N | K | schedule | ours ms | ours TFLOP/s | cuBLASLt ms | cuBLASLt "
         << "TFLOP/s | speed | max diff | rel |\n"
         << "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n";
    emit(head.str());

    for (const GemmShape& s : kShapes) {
      const int64_t set_bytes = (s.M + s.N) * s.K * 2;
      const int sets =
          static_cast<int>(std::max<int64_t>(1, (rotate_bytes + set_bytes - 1) / set_bytes));
      fg::Generator gen(42);
      std::vector<Tensor> a(sets), b(sets);
      const fg::Shape b_shape = kn ? fg::Shape{s.K, s.N} : fg::Shape{s.N, s.K};
      const double b_std = operands == "weights" ? 0.02 : 1.0 / std::sqrt(s.K);
      for (int i = 0; i < sets; ++i) {
        if (operands == "zeros") {
          a[i] = Tensor::zeros({s.M, s.K}, DType::BF16, gpu);
          b[i] = Tensor::zeros(b_shape, DType::BF16, gpu);
          continue;
        }
        a[i] = Tensor::randn({s.M, s.K}, gen, DType::BF16, gpu);
        b[i] = Tensor::randn(b_shape, gen, DType::BF16, gpu, 0.0, b_std);
      }
      const Tensor bias = with_bias ? Tensor::randn({s.N}, gen, DType::BF16, gpu) : Tensor();
      const Tensor c_ours = Tensor::empty({s.M, s.N}, DType::BF16, gpu);
      const Tensor c_ref = Tensor::empty({s.M, s.N}, DType::BF16, gpu);
      auto cublas = [&](int i) {
        fg::ops::gemm(a[i % sets], false, b[i % sets], !kn, c_ref, 1.0, 0.0, bias);
      };
      cublas(0);  // c_ref: the product of operand set 0, which each schedule's check uses
      // Each schedule checked against cuBLASLt first, then cuBLASLt and all of them timed.
      std::vector<std::function<void(int)>> candidates = {cublas};
      std::vector<std::pair<double, double>> diffs;
      for (GemmSchedule schedule : schedules) {
        auto ours = [&, schedule](int i) {
          fg::ops::detail::gemm_hopper_bf16(a[i % sets], b[i % sets], c_ours, bias, schedule,
                                            b_layout);
        };
        c_ours.fill_(NAN);  // what a schedule leaves unwritten shows as a NaN difference
        ours(0);
        diffs.push_back(differences(c_ours, c_ref));
        candidates.push_back(ours);
      }
      const std::vector<double> ms = timer.median_ms(candidates);
      const double flops = 2.0 * s.M * s.N * s.K, ms_ref = ms[0];
      for (size_t k = 0; k < schedules.size(); ++k) {
        const char* name = fg::ops::detail::gemm_schedule_name(schedules[k]);
        const double ms_ours = ms[k + 1];
        const auto [max_diff, rel] = diffs[k];
        emit("| " + std::string(s.name) + " | " + std::to_string(s.M) + " | " +
             std::to_string(s.N) + " | " + std::to_string(s.K) + " | " + name + " | " +
             fmt("%.3f", ms_ours) + " | " + fmt("%.1f", flops / (ms_ours * 1e-3) / 1e12) + " | " +
             fmt("%.3f", ms_ref) + " | " + fmt("%.1f", flops / (ms_ref * 1e-3) / 1e12) + " | " +
             fmt("%.3f", ms_ref / ms_ours) + " | " + fmt("%.2e", max_diff) + " | " +
             fmt("%.2e", rel) + " |\n");
        std::cout << s.name << " (" << s.M << ", " << s.N << ", " << s.K << "), " << sets
                  << " operand sets, " << name << ": ours " << fmt("%.3f", ms_ours)
                  << " ms, cuBLASLt " << fmt("%.3f", ms_ref) << " ms, max diff "
                  << fmt("%.2e", max_diff) << std::endl;
      }
    }

    emit(
        "\n## The MLP's backward: dgu = swiglu_backward(dy @ w_down, gu)\n\n"
        "fused: ops::swiglu_down_backward (one Hopper product, w_down read as a (K, N) B, "
        "SwiGLU's backward in its epilogue); composed: cuBLASLt's dy @ w_down (bf16 dout), then "
        "the swiglu_backward pass. Timed interleaved as above; speed = composed / fused; rel = "
        "||fused - composed|| / ||composed|| (the composed path rounds dout to bf16).\n\n"
        "| shape | M | D | F | fused ms | cuBLASLt dx ms | pass ms | composed ms | speed | rel "
        "|\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const MlpShape& s : kMlpShapes) {
      const int64_t set_bytes = (s.M * s.D + s.D * s.F + 2 * s.M * s.F) * 2;
      const int sets =
          static_cast<int>(std::max<int64_t>(1, (rotate_bytes + set_bytes - 1) / set_bytes));
      fg::Generator gen(43);
      std::vector<Tensor> dy(sets), w(sets), gu(sets), dout(sets);
      for (int i = 0; i < sets; ++i) {
        dy[i] = Tensor::randn({s.M, s.D}, gen, DType::BF16, gpu);
        w[i] = Tensor::randn({s.D, s.F}, gen, DType::BF16, gpu, 0.0, 1.0 / std::sqrt(s.D));
        gu[i] = Tensor::randn({s.M, 2 * s.F}, gen, DType::BF16, gpu, 0.0, 2.0);
        dout[i] = Tensor::empty({s.M, s.F}, DType::BF16, gpu);
      }
      const auto fused = [&](int i) {
        (void)fg::ops::swiglu_down_backward(dy[i % sets], w[i % sets], gu[i % sets]);
      };
      const auto product = [&](int i) {
        fg::ops::gemm(dy[i % sets], false, w[i % sets], false, dout[i % sets], 1.0, 0.0);
      };
      const auto pass = [&](int i) {
        (void)fg::ops::swiglu_backward(dout[i % sets], gu[i % sets]);
      };
      const auto composed = [&](int i) {
        product(i);
        pass(i);
      };
      product(0);
      const auto [max_diff, rel] = differences(fg::ops::swiglu_down_backward(dy[0], w[0], gu[0]),
                                               fg::ops::swiglu_backward(dout[0], gu[0]));
      (void)max_diff;
      const std::vector<double> ms = timer.median_ms({fused, product, pass, composed});
      emit("| " + std::string(s.name) + " | " + std::to_string(s.M) + " | " + std::to_string(s.D) +
           " | " + std::to_string(s.F) + " | " + fmt("%.3f", ms[0]) + " | " + fmt("%.3f", ms[1]) +
           " | " + fmt("%.3f", ms[2]) + " | " + fmt("%.3f", ms[3]) + " | " +
           fmt("%.3f", ms[3] / ms[0]) + " | " + fmt("%.2e", rel) + " |\n");
      std::cout << "MLP backward " << s.name << ": fused " << fmt("%.3f", ms[0]) << " ms, composed "
                << fmt("%.3f", ms[3]) << " ms" << std::endl;
    }

    std::cout << "\n" << md.str();
  } catch (const std::exception& e) {
    std::cerr << "bench_gemm: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
