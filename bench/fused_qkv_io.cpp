// fused_qkv_io: runs the fused layer's forward and backward once on inputs read from
// files and writes every output to files, for bench/compare_torch.py to check against
// PyTorch. DIR holds config.json and one raw little-endian array per tensor:
//
//   config.json  {"B", "T", "D", "H", "Hkv", "rotary_dim", "bias", "residual", "eps",
//                 "theta", "dtype": "bf16" | "f32"}
//   inputs       x, residual (if residual), norm_weight, wqkv, bias (if bias), dq, dk, dv,
//                dh: <name>.bin in dtype; positions.bin: int32 (T)
//   outputs      q, k, v, h, dx, dnorm_weight, dwqkv, dbias (if bias): <name>.out.bin in
//                dtype; rstd.out.bin: f32
//
//   fused_qkv_io DIR [--device cuda|cpu]
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/tensor.h"
#include "ops/rmsnorm_qkv_rope/rmsnorm_qkv_rope.h"

using fg::Device;
using fg::DType;
using fg::Shape;
using fg::Tensor;

namespace {

Tensor read_array(const std::string& path, const Shape& shape, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype);
  std::ifstream f(path, std::ios::binary);
  FG_CHECK(f.good(), "fused_qkv_io: cannot open ", path);
  f.read(static_cast<char*>(t.raw_data()), static_cast<std::streamsize>(t.nbytes()));
  FG_CHECK(f.gcount() == static_cast<std::streamsize>(t.nbytes()), "fused_qkv_io: ", path, " has ",
           f.gcount(), " bytes but ", t.describe(), " needs ", t.nbytes());
  return t.to(device);
}

void write_array(const std::string& path, const Tensor& t) {
  Tensor host = t.to(Device::cpu()).contiguous();
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(host.raw_data()), static_cast<std::streamsize>(host.nbytes()));
  FG_CHECK(f.good(), "fused_qkv_io: cannot write ", path);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    FG_CHECK(argc == 2 || (argc == 4 && std::string(argv[2]) == "--device"),
             "usage: fused_qkv_io DIR [--device cuda|cpu]");
    const std::string dir = argv[1];
    const Device device =
        argc == 4 && std::string(argv[3]) == "cpu" ? Device::cpu() : Device::cuda(0);
    std::ifstream cf(dir + "/config.json");
    FG_CHECK(cf.good(), "fused_qkv_io: cannot open ", dir, "/config.json");
    const nlohmann::json c = nlohmann::json::parse(cf);
    fg::ops::QKVRoPEConfig cfg;
    cfg.hidden_dim = c.at("D");
    cfg.num_heads = c.at("H");
    cfg.num_kv_heads = c.at("Hkv");
    cfg.rotary_dim = c.at("rotary_dim");
    cfg.use_bias = c.at("bias");
    cfg.add_residual = c.at("residual");
    cfg.eps = c.at("eps");
    cfg.rope_theta = c.at("theta");
    cfg.validate();
    const int64_t B = c.at("B"), T = c.at("T"), D = cfg.hidden_dim, hd = cfg.head_dim();
    const DType dt = fg::dtype_from_name(c.at("dtype"));
    auto in = [&](const char* name, const Shape& shape) {
      return read_array(dir + "/" + name + ".bin", shape, dt, device);
    };
    Tensor x = in("x", {B, T, D});
    Tensor residual = cfg.add_residual ? in("residual", {B, T, D}) : Tensor();
    Tensor norm_weight = in("norm_weight", {D});
    Tensor wqkv = in("wqkv", {cfg.qkv_dim(), D});
    Tensor bias = cfg.use_bias ? in("bias", {cfg.qkv_dim()}) : Tensor();
    Tensor positions = read_array(dir + "/positions.bin", {T}, DType::I32, device);
    Tensor dq = in("dq", {B, T, cfg.num_heads, hd});
    Tensor dk = in("dk", {B, T, cfg.num_kv_heads, hd});
    Tensor dv = in("dv", {B, T, cfg.num_kv_heads, hd});
    Tensor dh = in("dh", {B, T, D});

    fg::ops::QKVRoPEOut out =
        fg::ops::rmsnorm_qkv_rope_forward(cfg, x, positions, residual, norm_weight, wqkv, bias);
    fg::ops::QKVRoPEGrads g = fg::ops::rmsnorm_qkv_rope_backward(
        cfg, dq, dk, dv, dh, out.h, out.rstd, positions, norm_weight, wqkv);
    auto put = [&](const char* name, const Tensor& t) {
      write_array(dir + "/" + name + ".out.bin", t);
    };
    put("q", out.q);
    put("k", out.k);
    put("v", out.v);
    put("h", out.h);
    put("rstd", out.rstd.to(DType::F32));
    put("dx", g.dx);
    put("dnorm_weight", g.dnorm_weight);
    put("dwqkv", g.dwqkv);
    if (cfg.use_bias) put("dbias", g.dbias);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
