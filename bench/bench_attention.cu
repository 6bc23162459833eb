// Causal attention benchmark: forward and backward TFLOP/s of every flash
// tiling (bf16; forward FLOPs 4*B*H*T^2*hd/2, backward 2.5x that) at 16k
// tokens per call, and the simple kernel against the flash default at a small
// shape, both measured in this run. What is compared is timed interleaved
// (bench/common/gpu_timer.cuh): the tilings of a pass, and simple with flash.
// Prints markdown; --out FILE writes it too.
//   bench_attention [--out FILE] [--commit HASH] [--reps N]
#include <cuda_runtime.h>

#include <algorithm>
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
#include "ops/attention/attention.h"

using fg::Device;
using fg::DType;
using fg::Tensor;
namespace d = fg::ops::detail;

namespace {

struct Shape {
  int64_t B, T, H, Hkv, hd;
};

double forward_flops(const Shape& s) {
  return 4.0 * s.B * s.H * static_cast<double>(s.T) * s.T * s.hd / 2;
}

struct Buffers {
  Tensor q, k, v, dout;
  fg::ops::AttentionOut fwd;
  fg::ops::AttentionGrads grads;
};

Buffers make_buffers(const Shape& s) {
  Device gpu = Device::cuda(0);
  fg::Generator gen(1234);
  Buffers b;
  b.q = Tensor::randn({s.B, s.T, s.H, s.hd}, gen, DType::BF16, gpu);
  b.k = Tensor::randn({s.B, s.T, s.Hkv, s.hd}, gen, DType::BF16, gpu);
  b.v = Tensor::randn({s.B, s.T, s.Hkv, s.hd}, gen, DType::BF16, gpu);
  b.dout = Tensor::randn({s.B, s.T, s.H, s.hd}, gen, DType::BF16, gpu);
  b.fwd = {Tensor::empty(b.q.shape(), DType::BF16, gpu),
           Tensor::empty({s.B, s.H, s.T}, DType::F32, gpu)};
  b.grads = {Tensor::empty(b.q.shape(), DType::BF16, gpu),
             Tensor::empty(b.k.shape(), DType::BF16, gpu),
             Tensor::empty(b.v.shape(), DType::BF16, gpu)};
  return b;
}

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

std::string shape_cell(const Shape& s) {
  std::ostringstream os;
  os << "B=" << s.B << " T=" << s.T << " H=" << s.H;
  if (s.Hkv != s.H) os << " Hkv=" << s.Hkv;
  os << " hd=" << s.hd;
  return os.str();
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_path, commit = "unknown";
  int reps = 30;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--out" && i + 1 < argc) {
      out_path = argv[++i];
    } else if (a == "--commit" && i + 1 < argc) {
      commit = argv[++i];
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else {
      std::cerr << "usage: bench_attention [--out FILE] [--commit HASH] [--reps N]\n";
      return 2;
    }
  }
  try {
    FG_CHECK(fg::cuda_available(), "bench_attention needs a CUDA device");
    cudaDeviceProp prop{};
    FG_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    char date[32];
    std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));

    std::ostringstream md;
    md << "# Causal attention (bf16): flash kernels\n\n"
       << "GPU: " << prop.name << ", commit " << commit << ", " << date << ". Median of " << reps
       << " runs (CUDA events) after 3; what is compared (the tilings of a pass, simple and "
       << "flash) interleaved run by run. TFLOP/s counts causal FLOPs: "
       << "forward 4*B*H*T^2*hd/2, backward 2.5x forward. Backward includes the D = "
       << "rowsum(dO*O) pass, zeroing the f32 dq buffer and its conversion to bf16. "
       << "`*` marks the default tiling.\n\n"
       << "| shape | pass | tiling | ms | TFLOP/s |\n|---|---|---|---:|---:|\n";
    std::ostringstream summary;
    summary << "\n## Default tilings\n\n| shape | forward TFLOP/s | backward TFLOP/s | "
            << "forward ms | backward ms |\n|---|---:|---:|---:|---:|\n";

    const std::vector<Shape> shapes = {
        {4, 4096, 16, 16, 128}, {16, 1024, 16, 16, 128}, {4, 4096, 32, 32, 64},
        {16, 1024, 32, 32, 64}, {4, 4096, 32, 8, 128},   {16, 1024, 12, 12, 64},
        {1, 4096, 32, 32, 128},  // the seed model's layer
    };
    const fg::bench::GpuTimer timer(3, reps);
    for (const Shape& s : shapes) {
      Buffers b = make_buffers(s);
      const double flops = forward_flops(s);
      const int hd = static_cast<int>(s.hd);
      double default_ms[2] = {0, 0};
      for (int backward = 0; backward < 2; ++backward) {
        // The backward reads the forward's out and lse (default tiling).
        d::flash_attention_forward_cuda(b.q, b.k, b.v, b.fwd.out, b.fwd.lse);
        const int variants = d::flash_attention_variant_count(hd, backward);
        std::vector<std::function<void(int)>> tilings;
        for (int var = 0; var < variants; ++var)
          tilings.push_back([&, var, backward](int) {
            if (backward)
              d::flash_attention_backward_cuda(b.dout, b.q, b.k, b.v, b.fwd.out, b.fwd.lse, b.grads,
                                               var);
            else
              d::flash_attention_forward_cuda(b.q, b.k, b.v, b.fwd.out, b.fwd.lse, var);
          });
        const std::vector<double> tiling_ms = timer.median_ms(tilings);
        for (int var = 0; var < variants; ++var) {
          const double ms = tiling_ms[var];
          const double tflops = (backward ? 2.5 : 1.0) * flops / (ms * 1e-3) / 1e12;
          if (var == 0) default_ms[backward] = ms;
          md << "| " << shape_cell(s) << " | " << (backward ? "backward" : "forward") << " | "
             << d::flash_attention_variant_name(hd, backward, var) << (var == 0 ? " *" : "")
             << " | " << fmt("%.3f", ms) << " | " << fmt("%.1f", tflops) << " |\n";
          std::cout << shape_cell(s) << (backward ? " bwd " : " fwd ")
                    << d::flash_attention_variant_name(hd, backward, var) << ": " << fmt("%.3f", ms)
                    << " ms, " << fmt("%.1f", tflops) << " TFLOP/s" << std::endl;
        }
      }
      summary << "| " << shape_cell(s) << " | "
              << fmt("%.1f", flops / (default_ms[0] * 1e-3) / 1e12) << " | "
              << fmt("%.1f", 2.5 * flops / (default_ms[1] * 1e-3) / 1e12) << " | "
              << fmt("%.3f", default_ms[0]) << " | " << fmt("%.3f", default_ms[1]) << " |\n";
    }

    // The simple kernel once, at a small shape, interleaved with flash (both passes).
    std::ostringstream simple;
    simple << "\n## Flash against the simple kernel\n\n| shape | pass | simple ms | flash ms | "
           << "speedup |\n|---|---|---:|---:|---:|\n";
    for (const Shape& s : {Shape{2, 1024, 16, 16, 128}, Shape{2, 1024, 16, 16, 64}}) {
      Buffers b = make_buffers(s);
      d::flash_attention_forward_cuda(b.q, b.k, b.v, b.fwd.out, b.fwd.lse);
      const std::vector<double> ms = timer.median_ms({
          [&](int) { d::attention_forward_cuda_simple(b.q, b.k, b.v, b.fwd.out, b.fwd.lse); },
          [&](int) { d::flash_attention_forward_cuda(b.q, b.k, b.v, b.fwd.out, b.fwd.lse); },
          [&](int) {
            d::attention_backward_cuda_simple(b.dout, b.q, b.k, b.v, b.fwd.out, b.fwd.lse, b.grads);
          },
          [&](int) {
            d::flash_attention_backward_cuda(b.dout, b.q, b.k, b.v, b.fwd.out, b.fwd.lse, b.grads);
          },
      });
      const double fwd_simple = ms[0], fwd_flash = ms[1], bwd_simple = ms[2], bwd_flash = ms[3];
      simple << "| " << shape_cell(s) << " | forward | " << fmt("%.3f", fwd_simple) << " | "
             << fmt("%.3f", fwd_flash) << " | " << fmt("%.1fx", fwd_simple / fwd_flash) << " |\n"
             << "| " << shape_cell(s) << " | backward | " << fmt("%.3f", bwd_simple) << " | "
             << fmt("%.3f", bwd_flash) << " | " << fmt("%.1fx", bwd_simple / bwd_flash) << " |\n";
    }

    md << summary.str() << simple.str();
    std::cout << "\n" << md.str();
    if (!out_path.empty()) {
      std::ofstream f(out_path);
      FG_CHECK(f.good(), "cannot write ", out_path);
      f << md.str();
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_attention: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
