// bench_fused_qkv: the fused residual + RMSNorm + QKV + bias + RoPE layer (bf16) against
// cuBLASLt alone and against our unfused ops, at four shapes, in one run: CUDA events,
// the median of many repetitions, inputs rotated among buffers so a timed call never
// finds them in L2. What is compared is timed interleaved (bench/common/gpu_timer.cuh):
// a shape's six summary times together, the forward's passes together (on Hopper the
// projection in each schedule with the passes it replaces), and the backward's passes
// together with the backward alone. Prints markdown tables (the summary, then each pass
// with its bytes or FLOPs and the rate it reached) and optionally writes them (--md) and
// the summary as JSON (--json, read by bench/compare_torch.py).
//
//   bench_fused_qkv [--reps N] [--warmup N] [--shapes seed,gpt2,baby,gqa] [--md F] [--json F]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bench/common/gpu_timer.cuh"
#include "core/cuda_utils.h"
#include "core/tensor.h"
#include "ops/add/add.h"
#include "ops/gemm/gemm.h"
#include "ops/gemm/gemm_hopper.h"
#include "ops/linear/linear.h"
#include "ops/rmsnorm/rmsnorm.h"
#include "ops/rmsnorm_qkv_rope/rmsnorm_qkv_rope.h"
#include "ops/rope/rope.h"

using fg::Device;
using fg::DType;
using fg::Generator;
using fg::Tensor;
using fg::bench::GpuTimer;
namespace ops = fg::ops;

namespace {

constexpr int64_t kRotateBytes = 256ll << 20;  // each input set rotation spans > 5x the L2
constexpr int kMinSets = 2;

struct BenchShape {
  std::string name;
  int64_t B, T, D, H, Hkv;
  bool bias;
};

const std::vector<BenchShape> kShapes = {
    {"seed", 2, 4096, 4096, 32, 32, true},
    {"gpt2", 8, 1024, 768, 12, 12, false},
    {"baby", 64, 256, 384, 6, 6, false},
    {"gqa", 2, 4096, 4096, 32, 8, false},
};

// Device-to-device copy bandwidth (bytes read + written per second): the memory ceiling.
double copy_gbps(const GpuTimer& timer) {
  const int64_t bytes = 1ll << 30;
  Tensor a = Tensor::zeros({bytes / 4}, DType::F32, Device::cuda(0));
  Tensor b = Tensor::empty({bytes / 4}, DType::F32, Device::cuda(0));
  double ms = timer.median_ms([&](int) {
    FG_CUDA_CHECK(cudaMemcpyAsync(b.raw_data(), a.raw_data(), bytes, cudaMemcpyDeviceToDevice,
                                  fg::cuda::stream()));
  });
  return 2.0 * bytes / (ms * 1e-3) / 1e9;
}

struct Row {  // one shape's summary, all in ms
  BenchShape shape;
  double fwd, fwd_bwd, gemm, gemm3, unfused, unfused_fwd_bwd;
  double kept_bytes, fwd_floor_bytes, flops_fwd;
};

struct Stage {
  std::string name;
  double ms, bytes, flops;  // one of bytes / flops is 0
};

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

Row bench_shape(const BenchShape& s, const GpuTimer& timer, std::vector<Stage>& stages) {
  const Device gpu = Device::cuda(0);
  const DType bf = DType::BF16;
  ops::QKVRoPEConfig cfg;
  cfg.hidden_dim = s.D;
  cfg.num_heads = s.H;
  cfg.num_kv_heads = s.Hkv;
  cfg.rotary_dim = s.D / s.H;
  cfg.add_residual = true;
  cfg.use_bias = s.bias;
  const int64_t rows = s.B * s.T, D = s.D, hd = cfg.head_dim(), N = cfg.qkv_dim();
  const int64_t qk = (s.H + s.Hkv) * hd, H = s.H, Hkv = s.Hkv;
  const double e2 = 2;  // bytes per bf16

  // Input sets, rotated per repetition: activations and incoming gradients.
  const int64_t set_bytes = rows * D * 2 * 3 + rows * N * 2 * 2;
  const int sets = static_cast<int>(std::max<int64_t>(kMinSets, kRotateBytes / set_bytes + 1));
  Generator gen(1234);
  std::vector<Tensor> x, res, dq, dk, dv, dh, dqkv;
  for (int i = 0; i < sets; ++i) {
    x.push_back(Tensor::randn({s.B, s.T, D}, gen, bf, gpu));
    res.push_back(Tensor::randn({s.B, s.T, D}, gen, bf, gpu));
    dq.push_back(Tensor::randn({s.B, s.T, H, hd}, gen, bf, gpu, 0.0, 0.01));
    dk.push_back(Tensor::randn({s.B, s.T, Hkv, hd}, gen, bf, gpu, 0.0, 0.01));
    dv.push_back(Tensor::randn({s.B, s.T, Hkv, hd}, gen, bf, gpu, 0.0, 0.01));
    dh.push_back(Tensor::randn({s.B, s.T, D}, gen, bf, gpu, 0.0, 0.01));
    dqkv.push_back(Tensor::randn({rows, N}, gen, bf, gpu, 0.0, 0.01));
  }
  Tensor g = Tensor::uniform({D}, gen, 0.5, 1.5, bf, gpu);
  Tensor w = Tensor::randn({N, D}, gen, bf, gpu, 0.0, 0.02);
  Tensor bias = s.bias ? Tensor::randn({N}, gen, bf, gpu, 0.0, 0.02) : Tensor();
  std::vector<int32_t> p(s.T);
  for (int64_t t = 0; t < s.T; ++t) p[t] = static_cast<int32_t>(t);
  Tensor pos = Tensor::from_ints(p, {s.T}, gpu);
  auto at = [&](const std::vector<Tensor>& v, int i) -> const Tensor& { return v[i % sets]; };
  auto rows2d = [&](const Tensor& t) { return t.view({rows, t.numel() / rows}); };

  Row r{};
  r.shape = s;
  // (a) the fused forward, (b) forward + backward.
  auto fused_forward = [&](int i) {
    ops::rmsnorm_qkv_rope_forward(cfg, at(x, i), pos, at(res, i), g, w, bias);
  };
  auto fused_forward_backward = [&](int i) {
    ops::QKVRoPEOut o = ops::rmsnorm_qkv_rope_forward(cfg, at(x, i), pos, at(res, i), g, w, bias);
    ops::rmsnorm_qkv_rope_backward(cfg, at(dq, i), at(dk, i), at(dv, i), at(dh, i), o.h, o.rstd,
                                   pos, g, w);
  };
  // (c) cuBLASLt: the QKV GEMM alone; (d) the three GEMMs of forward + backward.
  Tensor qkv_out = Tensor::empty({rows, N}, bf, gpu), dn_out = Tensor::empty({rows, D}, bf, gpu);
  Tensor dw_out = Tensor::empty({N, D}, bf, gpu);
  auto qkv_gemm = [&](int i) { ops::gemm(rows2d(at(x, i)), false, w, true, qkv_out); };
  auto three_gemms = [&](int i) {
    ops::gemm(rows2d(at(x, i)), false, w, true, qkv_out);
    ops::gemm(at(dqkv, i), false, w, false, dn_out);
    ops::gemm(at(dqkv, i), true, rows2d(at(x, i)), false, dw_out);
  };
  // (e) our ops one pass each: add, rmsnorm, linear (bias in its epilogue), rope on q
  // and on k, v copied out; and backward the same way (rope backward twice, the dqkv
  // pack, linear backward, rmsnorm backward, the dh add).
  auto unfused_forward = [&](int i) {
    Tensor h = ops::add_forward(at(x, i), at(res, i));
    ops::RMSNormOut n = ops::rmsnorm_forward(h, g, cfg.eps);
    Tensor qkv = ops::linear_forward(n.y, w, bias);
    Tensor heads = qkv.view({s.B, s.T, H + 2 * Hkv, hd});
    Tensor q = ops::rope_forward(heads.slice(2, 0, H), pos, cfg.rotary_dim, cfg.rope_theta);
    Tensor k = ops::rope_forward(heads.slice(2, H, H + Hkv), pos, cfg.rotary_dim, cfg.rope_theta);
    Tensor v = heads.slice(2, H + Hkv, H + 2 * Hkv).contiguous();
    return std::vector<Tensor>{h, n.y, n.rstd};
  };
  auto unfused_forward_backward = [&](int i) {
    std::vector<Tensor> f = unfused_forward(i);
    Tensor dqr = ops::rope_backward(at(dq, i), pos, cfg.rotary_dim, cfg.rope_theta);
    Tensor dkr = ops::rope_backward(at(dk, i), pos, cfg.rotary_dim, cfg.rope_theta);
    Tensor packed = Tensor::empty({s.B, s.T, H + 2 * Hkv, hd}, bf, gpu);
    packed.slice(2, 0, H).copy_(dqr);
    packed.slice(2, H, H + Hkv).copy_(dkr);
    packed.slice(2, H + Hkv, H + 2 * Hkv).copy_(at(dv, i));
    ops::LinearGrads lg = ops::linear_backward(packed.view({s.B, s.T, N}), f[1], w, s.bias);
    ops::RMSNormGrads ng = ops::rmsnorm_backward(lg.dx, f[0], g, f[2]);
    ops::add_inplace(ng.dx, at(dh, i));
  };
  // The summary's ratios are among these six: timed together.
  const std::vector<double> summary_ms =
      timer.median_ms({fused_forward, fused_forward_backward, qkv_gemm, three_gemms,
                       unfused_forward, unfused_forward_backward});
  r.fwd = summary_ms[0];
  r.fwd_bwd = summary_ms[1];
  r.gemm = summary_ms[2];
  r.gemm3 = summary_ms[3];
  r.unfused = summary_ms[4];
  r.unfused_fwd_bwd = summary_ms[5];

  // The passes of the fused path, a row each: the forward's timed together, then the backward's.
  Tensor h_t = Tensor::empty({rows, D}, bf, gpu), n_t = Tensor::empty({rows, D}, bf, gpu);
  Tensor rstd_t = Tensor::empty({rows}, DType::F32, gpu);
  Tensor qk_t = Tensor::empty({rows, qk}, bf, gpu), q_t = Tensor::empty({s.B, s.T, H, hd}, bf, gpu);
  Tensor k_t = Tensor::empty({s.B, s.T, Hkv, hd}, bf, gpu),
         v_t = Tensor::empty({rows, Hkv * hd}, bf, gpu);
  Tensor dbias_t = s.bias ? Tensor::empty({N}, bf, gpu) : Tensor();
  Tensor dx_t = Tensor::empty({rows, D}, bf, gpu), dg_t = Tensor::empty({D}, bf, gpu);
  ops::detail::rmsnorm_rows_forward(x[0], res[0], g, cfg.eps, h_t, n_t, rstd_t);
  const double gemm_flops = 2.0 * rows * D * N;
  // stage() collects a pass; time_stages() times those collected together and records them.
  std::vector<Stage> untimed;
  std::vector<std::function<void(int)>> untimed_runs;
  auto stage = [&](const std::string& name, double bytes, double flops,
                   std::function<void(int)> f) {
    untimed.push_back({s.name + ": " + name, 0, bytes, flops});
    untimed_runs.push_back(std::move(f));
  };
  auto time_stages = [&] {
    const std::vector<double> ms = timer.median_ms(untimed_runs);
    for (size_t k = 0; k < untimed.size(); ++k) {
      untimed[k].ms = ms[k];
      stages.push_back(untimed[k]);
    }
    untimed.clear();
    untimed_runs.clear();
  };
  stage("fwd add+rmsnorm (h, n, rstd)", e2 * rows * D * 4 + 4.0 * rows, 0, [&](int i) {
    ops::detail::rmsnorm_rows_forward(rows2d(at(x, i)), rows2d(at(res, i)), g, cfg.eps, h_t, n_t,
                                      rstd_t);
  });
  stage("fwd GEMM q|k + GEMM v (bias epilogue; cuBLASLt, off Hopper)", 0, gemm_flops, [&](int i) {
    ops::gemm(rows2d(at(x, i)), false, w.slice(0, 0, qk), true, qk_t, 1.0, 0.0,
              s.bias ? bias.slice(0, 0, qk) : Tensor());
    ops::gemm(rows2d(at(x, i)), false, w.slice(0, qk, N), true, v_t, 1.0, 0.0,
              s.bias ? bias.slice(0, qk, N) : Tensor());
  });
  stage("fwd rope q|k -> q, k (off Hopper)", e2 * rows * qk * 2, 0, [&](int i) {
    Tensor src = at(dqkv, i).view({s.B, s.T, H + 2 * Hkv, hd});  // rotated inputs: q|k heads
    ops::detail::rope_segments(
        {{src.slice(2, 0, H), q_t, true}, {src.slice(2, H, H + Hkv), k_t, true}}, pos,
        cfg.rotary_dim, cfg.rope_theta, false);
  });
  // The Hopper projection's outputs, declared here to outlive the timing below.
  ops::QKVRoPEOut hopper_out;
  if (ops::detail::gemm_hopper_available()) {  // what the forward runs there instead of both
    hopper_out.q = q_t;
    hopper_out.k = k_t;
    hopper_out.v = Tensor::empty({s.B, s.T, Hkv, hd}, bf, gpu);
    for (ops::detail::GemmSchedule schedule : ops::detail::kGemmSchedules)
      stage(std::string("fwd Hopper GEMM, bias + RoPE epilogue -> q, k, v (") +
                ops::detail::gemm_schedule_name(schedule) + ")",
            0, gemm_flops, [&, schedule](int i) {
              ops::detail::qkv_rope_projection_cuda(cfg, rows2d(at(x, i)), w, bias, pos, Tensor(),
                                                    s.T, hopper_out, schedule);
            });
  }
  time_stages();
  stage("bwd pack [rope^-1 dq | rope^-1 dk | dv] + dbias", e2 * rows * N * 2, 0, [&](int i) {
    Tensor heads = at(dqkv, i).view({s.B, s.T, H + 2 * Hkv, hd});
    ops::detail::rope_segments({{at(dq, i), heads.slice(2, 0, H), true},
                                {at(dk, i), heads.slice(2, H, H + Hkv), true},
                                {at(dv, i), heads.slice(2, H + Hkv, H + 2 * Hkv), false}},
                               pos, cfg.rotary_dim, cfg.rope_theta, true, {dbias_t});
  });
  stage("bwd GEMM dn = dqkv W", 0, gemm_flops,
        [&](int i) { ops::gemm(at(dqkv, i), false, w, false, dn_out); });
  stage("bwd rmsnorm backward (+dh, rebuilds n)", e2 * rows * D * 5 + 4.0 * rows, 0, [&](int i) {
    // dy, dh and x from rotated buffers (dh and residual stand in for dn and dh).
    ops::detail::rmsnorm_rows_backward(rows2d(at(dh, i)), rows2d(at(res, i)), rows2d(at(x, i)), g,
                                       rstd_t, dx_t, dg_t, n_t);
  });
  stage("bwd GEMM dW = dqkv^T n", 0, gemm_flops,
        [&](int i) { ops::gemm(at(dqkv, i), true, rows2d(at(x, i)), false, dw_out); });
  // The backward alone, on a forward's h and rstd: its time against the passes above.
  ops::QKVRoPEOut fo = ops::rmsnorm_qkv_rope_forward(cfg, x[0], pos, res[0], g, w, bias);
  stage("backward alone (the sum of the passes above, ideally)", 0, 0, [&](int i) {
    ops::rmsnorm_qkv_rope_backward(cfg, at(dq, i), at(dk, i), at(dv, i), at(dh, i), fo.h, fo.rstd,
                                   pos, g, w);
  });
  time_stages();

  r.kept_bytes = e2 * rows * D + 4.0 * rows;
  r.fwd_floor_bytes =
      e2 * (2.0 * rows * D + N * D + (s.bias ? N : 0) + rows * D + rows * N) + 4.0 * rows;
  r.flops_fwd = gemm_flops;
  return r;
}

struct Args {
  int reps = 50, warmup = 10;
  std::vector<std::string> shapes;
  std::string md, json;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string {
      FG_CHECK(i + 1 < argc, "bench_fused_qkv: ", k, " needs a value");
      return argv[++i];
    };
    if (k == "--reps") {
      a.reps = std::stoi(value());
    } else if (k == "--warmup") {
      a.warmup = std::stoi(value());
    } else if (k == "--md") {
      a.md = value();
    } else if (k == "--json") {
      a.json = value();
    } else if (k == "--shapes") {
      std::stringstream ss(value());
      for (std::string t; std::getline(ss, t, ',');) a.shapes.push_back(t);
    } else {
      FG_THROW("bench_fused_qkv: unknown flag ", k,
               " (flags: --reps N --warmup N --shapes seed,gpt2,baby,gqa --md FILE --json FILE)");
    }
  }
  FG_CHECK(a.reps > 0 && a.warmup >= 0, "bench_fused_qkv: --reps must be > 0, --warmup >= 0");
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args args = parse(argc, argv);
    FG_CHECK(fg::cuda_available(), "bench_fused_qkv: no CUDA device");
    cudaDeviceProp prop{};
    FG_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const GpuTimer timer(args.warmup, args.reps);
    const double gbps = copy_gbps(timer);

    std::vector<Row> rows;
    std::vector<Stage> stages;
    for (const BenchShape& s : kShapes) {
      if (!args.shapes.empty() &&
          std::find(args.shapes.begin(), args.shapes.end(), s.name) == args.shapes.end())
        continue;
      rows.push_back(bench_shape(s, timer, stages));
      std::cerr << "done: " << s.name << "\n";
    }

    std::ostringstream md;
    md << "GPU: " << prop.name << " (" << prop.multiProcessorCount << " SMs, L2 "
       << prop.l2CacheSize / (1 << 20) << " MB); bf16; medians of " << args.reps << " after "
       << args.warmup << " warm-up, what is compared interleaved; device copy " << fmt("%.0f", gbps)
       << " GB/s (read+write)\n\n";
    md << "| shape | (a) fused fwd | (c) QKV GEMM | (a)/(c) | (b) fused fwd+bwd | (d) 3 GEMMs | "
          "(b)/(d) | (e) unfused fwd | (e)/(a) | unfused fwd+bwd | kept for bwd (h + rstd) |\n"
       << "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (const Row& r : rows) {
      const BenchShape& s = r.shape;
      md << "| " << s.name << " B" << s.B << " T" << s.T << " D" << s.D << " H" << s.H << " Hkv"
         << s.Hkv << (s.bias ? " bias" : "") << " | " << fmt("%.3f", r.fwd) << " ms | "
         << fmt("%.3f", r.gemm) << " ms | " << fmt("%.2fx", r.fwd / r.gemm) << " | "
         << fmt("%.3f", r.fwd_bwd) << " ms | " << fmt("%.3f", r.gemm3) << " ms | "
         << fmt("%.2fx", r.fwd_bwd / r.gemm3) << " | " << fmt("%.3f", r.unfused) << " ms | "
         << fmt("%.2fx", r.unfused / r.fwd) << " | " << fmt("%.3f", r.unfused_fwd_bwd) << " ms | "
         << fmt("%.1f", r.kept_bytes / 1e6) << " MB (" << fmt("%.1f", r.kept_bytes / 1048576.0)
         << " MiB) |\n";
    }
    md << "\nFloors: (c) is the arithmetic floor of the forward; the forward's byte floor "
          "(x, residual, W, bias read once; h, q, k, v, rstd written once) at the copy rate:\n\n"
       << "| shape | GEMM TFLOP/s in (c) | fwd byte floor | at copy rate | (c) + that |\n"
       << "|---|---|---|---|---|\n";
    for (const Row& r : rows) {
      const double floor_ms = r.fwd_floor_bytes / (gbps * 1e9) * 1e3;
      md << "| " << r.shape.name << " | " << fmt("%.0f", r.flops_fwd / (r.gemm * 1e-3) / 1e12)
         << " | " << fmt("%.0f", r.fwd_floor_bytes / 1e6) << " MB | " << fmt("%.3f", floor_ms)
         << " ms | " << fmt("%.3f", r.gemm + floor_ms) << " ms |\n";
    }
    md << "\nPasses of the fused path (rates: memory passes in GB/s of bytes moved, GEMMs in "
          "TFLOP/s):\n\n| pass | ms | rate |\n|---|---|---|\n";
    for (const Stage& st : stages) {
      std::string rate = st.bytes > 0   ? fmt("%.0f GB/s", st.bytes / (st.ms * 1e-3) / 1e9)
                         : st.flops > 0 ? fmt("%.0f TFLOP/s", st.flops / (st.ms * 1e-3) / 1e12)
                                        : "";
      md << "| " << st.name << " | " << fmt("%.4f", st.ms) << " | " << rate << " |\n";
    }
    std::cout << md.str();
    if (!args.md.empty()) {
      std::ofstream f(args.md);
      FG_CHECK(f.good(), "bench_fused_qkv: cannot write ", args.md);
      f << md.str();
    }
    if (!args.json.empty()) {
      std::ofstream f(args.json);
      FG_CHECK(f.good(), "bench_fused_qkv: cannot write ", args.json);
      f << "{\"gpu\": \"" << prop.name << "\", \"shapes\": {";
      for (size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        f << (i ? ", " : "") << "\"" << r.shape.name << "\": {\"fwd_ms\": " << r.fwd
          << ", \"fwd_bwd_ms\": " << r.fwd_bwd << ", \"gemm_ms\": " << r.gemm
          << ", \"gemm3_ms\": " << r.gemm3 << ", \"unfused_fwd_ms\": " << r.unfused
          << ", \"unfused_fwd_bwd_ms\": " << r.unfused_fwd_bwd
          << ", \"kept_bytes\": " << r.kept_bytes << "}";
      }
      f << "}}\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
