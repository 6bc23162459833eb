// Where a tensor lives: the CPU or CUDA device n.
#pragma once

#include <string>

namespace fg {

struct Device {
  enum class Kind : unsigned char { CPU, CUDA };
  Kind kind = Kind::CPU;
  int index = 0;

  static Device cpu() { return {Kind::CPU, 0}; }
  static Device cuda(int index = 0) { return {Kind::CUDA, index}; }
  bool is_cpu() const { return kind == Kind::CPU; }
  bool is_cuda() const { return kind == Kind::CUDA; }
  bool operator==(const Device&) const = default;
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

// "cpu", "cuda", "cuda:1"; throws fg::Error on anything else.
Device parse_device(const std::string& name);

// True when fusegpt was built with CUDA and at least one GPU is visible.
bool cuda_available();
int cuda_device_count();
// major * 10 + minor of CUDA device `index` (90 for an H100); 0 without CUDA.
int cuda_compute_capability(int index);

}  // namespace fg
