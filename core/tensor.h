// Tensor: a strided view (shape, strides, offset, dtype) on shared Storage.
// Views share storage; contiguous()/clone()/to() copy.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/philox.h"
#include "core/storage.h"

namespace fg {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);  // "(4, 7, 33)"
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false

  // Creation. All default to f32 on the CPU.
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32,
                     Device device = Device::cpu());
  static Tensor arange(int64_t n, DType dtype = DType::F32, Device device = Device::cpu());
  // Philox draws: element i gets the same value on every device.
  static Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::F32,
                      Device device = Device::cpu(), double mean = 0.0, double std = 1.0);
  static Tensor uniform(const Shape& shape, Generator& gen, double low, double high,
                        DType dtype = DType::F32, Device device = Device::cpu());
  // Copies host values (converted to dtype) into a new tensor.
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                            DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor from_ints(const std::vector<int32_t>& values, const Shape& shape,
                          Device device = Device::cpu());

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t offset() const { return offset_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool is_cuda() const { return device_.is_cuda(); }
  bool is_contiguous() const;
  std::string shape_str() const { return fg::shape_str(shape_); }
  // "(4, 7, 33) f32 cuda:0", for error messages.
  std::string describe() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* raw_data() const;
  // Whether the first element starts on a multiple of `bytes` (16: TMA and 16-byte accesses).
  bool starts_aligned(size_t bytes) const {
    return reinterpret_cast<uintptr_t>(raw_data()) % bytes == 0;
  }
  // Typed pointer to the first element; checks that T matches the dtype.
  template <class T>
  T* data() const {
    FG_CHECK(dtype_of<T>() == dtype_, "tensor ", describe(), " accessed as ",
             dtype_name(dtype_of<T>()));
    return static_cast<T*>(raw_data());
  }

  // Views (share storage).
  Tensor view(const Shape& shape) const;     // needs a contiguous tensor; one dim may be -1
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a copy
  Tensor slice(int dim, int64_t start, int64_t end) const;
  Tensor transpose(int d0, int d1) const;

  // Copies.
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor to(Device device, DType dtype) const;
  // Writes into this tensor's elements (const: the handle does not change).
  void copy_(const Tensor& src) const;  // same shape; any dtype and device
  void fill_(double value) const;
  void zero_() const { fill_(0.0); }

  double item() const;                   // one-element tensor as double
  std::vector<double> to_vector() const;  // all elements in row-major order, as double

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Shape strides_;
  int64_t offset_ = 0;  // in elements
  DType dtype_ = DType::F32;
  Device device_;
};

// Contiguous row-major strides for a shape.
Shape contiguous_strides(const Shape& shape);

// Elementwise helpers for tests and tools; they compute in f64 on the CPU.
double max_abs_diff(const Tensor& a, const Tensor& b);
double relative_error(const Tensor& a, const Tensor& b);  // ||a-b|| / ||b||, NaN never passes
bool has_non_finite(const Tensor& t);
double sum(const Tensor& t);

// Checks used by every op: throw a sentence naming the op, the tensor and both sides.
void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected);
void check_dtype(const char* op, const char* name, const Tensor& t, DType expected);
void check_same_device(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                       const Tensor& b);
void check_defined(const char* op, const char* name, const Tensor& t);

// Runs f.template operator()<T>() with T = float or double for the tensor's dtype.
template <class F>
decltype(auto) dispatch_float(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: return f.template operator()<float>();
    case DType::F64: return f.template operator()<double>();
    default: FG_THROW(op, ": dtype ", dtype_name(dtype), " is not supported here (f32 or f64)");
  }
}

}  // namespace fg
