#include "core/tensor.h"

#include <cmath>
#include <cstring>

#include "core/cuda_utils.h"
#include "core/tensor_cuda.h"

namespace fg {

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

namespace {

#ifndef FG_CUDA
[[noreturn]] void no_cuda(const char* what) {
  FG_THROW(what, ": fusegpt was built without CUDA (FG_CUDA=OFF)");
}
#endif

double load_as_double(const void* p, DType t) {
  switch (t) {
    case DType::F32: return *static_cast<const float*>(p);
    case DType::F64: return *static_cast<const double*>(p);
    case DType::BF16: return bf16_to_float(*static_cast<const bf16*>(p));
    case DType::I32: return *static_cast<const int32_t*>(p);
  }
  return 0;
}

void store_double(void* p, DType t, double v) {
  switch (t) {
    case DType::F32: *static_cast<float*>(p) = static_cast<float>(v); break;
    case DType::F64: *static_cast<double*>(p) = v; break;
    case DType::BF16: *static_cast<bf16*>(p) = float_to_bf16(static_cast<float>(v)); break;
    case DType::I32: *static_cast<int32_t*>(p) = static_cast<int32_t>(v); break;
  }
}

// Visits every element of `shape` in row-major order, passing its linear index.
template <class F>
void for_each_index(const Shape& shape, F&& f) {
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    f(i, idx);
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

int64_t element_offset(const Tensor& t, const std::vector<int64_t>& idx) {
  int64_t off = t.offset();
  for (size_t d = 0; d < idx.size(); ++d) off += idx[d] * t.strides()[d];
  return off;
}

void cpu_strided_copy(const Tensor& src, const Tensor& dst) {
  if (src.is_contiguous() && dst.is_contiguous() && src.dtype() == dst.dtype()) {
    std::memcpy(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
  auto* sbase = static_cast<const char*>(src.storage()->data());
  auto* dbase = static_cast<char*>(dst.storage()->data());
  size_t ss = dtype_size(src.dtype()), ds = dtype_size(dst.dtype());
  for_each_index(src.shape(), [&](int64_t, const std::vector<int64_t>& idx) {
    double v = load_as_double(sbase + element_offset(src, idx) * ss, src.dtype());
    store_double(dbase + element_offset(dst, idx) * ds, dst.dtype(), v);
  });
}

}  // namespace

int64_t Tensor::size(int d) const {
  int nd = dim();
  int dd = d < 0 ? d + nd : d;
  FG_CHECK(dd >= 0 && dd < nd, "dimension ", d, " out of range for tensor ", shape_str());
  return shape_[dd];
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

std::string Tensor::describe() const {
  if (!defined()) return "(undefined)";
  return shape_str() + " " + dtype_name(dtype_) + " " + device_.str();
}

void* Tensor::raw_data() const {
  FG_CHECK(defined(), "access to the data of an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) FG_CHECK(d >= 0, "negative dimension in shape ", fg::shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<Storage>(shape_numel(shape) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) {
  return full(shape, 1.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::arange(int64_t n, DType dtype, Device device) {
  Tensor t = empty({n}, dtype, device);
  if (device.is_cuda()) {
#ifdef FG_CUDA
    detail::cuda_arange(t);
#else
    no_cuda("arange");
#endif
  } else {
    char* p = static_cast<char*>(t.raw_data());
    for (int64_t i = 0; i < n; ++i) store_double(p + i * dtype_size(dtype), dtype, double(i));
  }
  return t;
}

namespace {
Tensor philox_tensor(const Shape& shape, Generator& gen, DType dtype, Device device, bool normal,
                     double a, double b) {
  Tensor t = Tensor::empty(shape, dtype, device);
  uint64_t seed = gen.seed(), offset = gen.next_offset();
  if (device.is_cuda()) {
#ifdef FG_CUDA
    detail::cuda_philox_fill(t, seed, offset, normal, a, b);
#else
    no_cuda("random tensor");
#endif
  } else {
    char* p = static_cast<char*>(t.raw_data());
    size_t es = dtype_size(dtype);
    for (int64_t i = 0; i < t.numel(); ++i) {
      double v = normal ? a + b * philox_normal(seed, offset, i)
                        : a + (b - a) * (1.0 - philox_uniform(seed, offset, i));
      store_double(p + i * es, dtype, v);
    }
  }
  return t;
}
}  // namespace

Tensor Tensor::randn(const Shape& shape, Generator& gen, DType dtype, Device device, double mean,
                     double std) {
  return philox_tensor(shape, gen, dtype, device, true, mean, std);
}

Tensor Tensor::uniform(const Shape& shape, Generator& gen, double low, double high, DType dtype,
                       Device device) {
  return philox_tensor(shape, gen, dtype, device, false, low, high);
}

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype,
                           Device device) {
  FG_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ",
           values.size(), " values do not fill shape ", fg::shape_str(shape));
  Tensor t = empty(shape, dtype, Device::cpu());
  char* p = static_cast<char*>(t.raw_data());
  for (size_t i = 0; i < values.size(); ++i) store_double(p + i * dtype_size(dtype), dtype, values[i]);
  return device.is_cpu() ? t : t.to(device);
}

Tensor Tensor::from_ints(const std::vector<int32_t>& values, const Shape& shape, Device device) {
  FG_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_ints: ",
           values.size(), " values do not fill shape ", fg::shape_str(shape));
  Tensor t = empty(shape, DType::I32, Device::cpu());
  std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(int32_t));
  return device.is_cpu() ? t : t.to(device);
}

Tensor Tensor::view(const Shape& shape) const {
  FG_CHECK(is_contiguous(), "view: tensor ", shape_str(), " is not contiguous; use reshape");
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      FG_CHECK(infer < 0, "view: more than one -1 in ", fg::shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    FG_CHECK(known > 0 && numel() % known == 0, "view: cannot view ", shape_str(), " as ",
             fg::shape_str(shape));
    s[infer] = numel() / known;
  }
  FG_CHECK(shape_numel(s) == numel(), "view: cannot view ", shape_str(), " (", numel(),
           " elements) as ", fg::shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  return is_contiguous() ? view(shape) : contiguous().view(shape);
}

Tensor Tensor::slice(int d, int64_t start, int64_t end) const {
  int nd = dim();
  int dd = d < 0 ? d + nd : d;
  FG_CHECK(dd >= 0 && dd < nd, "slice: dimension ", d, " out of range for ", shape_str());
  FG_CHECK(0 <= start && start <= end && end <= shape_[dd], "slice: [", start, ", ", end,
           ") out of range for dimension ", dd, " of ", shape_str());
  Tensor t = *this;
  t.offset_ += start * strides_[dd];
  t.shape_[dd] = end - start;
  return t;
}

Tensor Tensor::transpose(int d0, int d1) const {
  int nd = dim();
  int a = d0 < 0 ? d0 + nd : d0, b = d1 < 0 ? d1 + nd : d1;
  FG_CHECK(a >= 0 && a < nd && b >= 0 && b < nd, "transpose: dimensions ", d0, ", ", d1,
           " out of range for ", shape_str());
  Tensor t = *this;
  std::swap(t.shape_[a], t.shape_[b]);
  std::swap(t.strides_[a], t.strides_[b]);
  return t;
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const { return to(device_, dtype_); }

Tensor Tensor::to(Device device) const { return to(device, dtype_); }
Tensor Tensor::to(DType dtype) const { return to(device_, dtype); }

Tensor Tensor::to(Device device, DType dtype) const {
  FG_CHECK(defined(), "to: tensor is undefined");
  Tensor t = empty(shape_, dtype, device);
  t.copy_(*this);
  return t;
}

void Tensor::copy_(const Tensor& src) const {
  FG_CHECK(defined() && src.defined(), "copy_: undefined tensor");
  FG_CHECK(shape_ == src.shape_, "copy_: destination is ", shape_str(), " but source is ",
           src.shape_str());
  if (numel() == 0) return;
  if (device_.is_cpu() && src.device_.is_cpu()) {
    cpu_strided_copy(src, *this);
    return;
  }
#ifdef FG_CUDA
  if (device_ == src.device_) {
    cuda::set_device(device_.index);
    detail::cuda_strided_copy(src, *this);
    return;
  }
  if (device_.is_cuda() && src.device_.is_cuda()) {  // GPU to GPU: stage through the host
    copy_(src.to(Device::cpu()));
    return;
  }
  if (src.device_.is_cpu()) {  // host to device: convert on the host, then one memcpy
    Tensor staged = src.is_contiguous() && src.dtype_ == dtype_ ? src : src.to(Device::cpu(), dtype_);
    Tensor dst = is_contiguous() ? *this : empty(shape_, dtype_, device_);
    cuda::set_device(device_.index);
    FG_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), staged.raw_data(), dst.nbytes(),
                                  cudaMemcpyHostToDevice, cuda::stream()));
    FG_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));  // staged may die after return
    if (!is_contiguous()) detail::cuda_strided_copy(dst, *this);
    return;
  }
  // device to host: make it contiguous in the target dtype on the device, then copy down.
  cuda::set_device(src.device_.index);
  Tensor staged = src.is_contiguous() && src.dtype_ == dtype_ ? src : src.to(src.device_, dtype_);
  Tensor dst = is_contiguous() ? *this : empty(shape_, dtype_, Device::cpu());
  FG_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), staged.raw_data(), dst.nbytes(),
                                cudaMemcpyDeviceToHost, cuda::stream()));
  FG_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
  if (!is_contiguous()) cpu_strided_copy(dst, *this);
#else
  no_cuda("copy_");
#endif
}

void Tensor::fill_(double value) const {
  FG_CHECK(defined(), "fill_: tensor is undefined");
  if (device_.is_cuda()) {
#ifdef FG_CUDA
    cuda::set_device(device_.index);
    detail::cuda_fill(*this, value);
#else
    no_cuda("fill_");
#endif
    return;
  }
  auto* base = static_cast<char*>(storage_->data());
  size_t es = dtype_size(dtype_);
  for_each_index(shape_, [&](int64_t, const std::vector<int64_t>& idx) {
    store_double(base + element_offset(*this, idx) * es, dtype_, value);
  });
}

double Tensor::item() const {
  FG_CHECK(numel() == 1, "item: tensor ", shape_str(), " has ", numel(), " elements, not 1");
  return to_vector()[0];
}

std::vector<double> Tensor::to_vector() const {
  Tensor host = to(Device::cpu(), DType::F64);
  const double* p = host.data<double>();
  return std::vector<double>(p, p + host.numel());
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  FG_CHECK(a.shape() == b.shape(), "max_abs_diff: ", a.shape_str(), " vs ", b.shape_str());
  auto va = a.to_vector(), vb = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    double d = std::fabs(va[i] - vb[i]);
    if (std::isnan(d)) return NAN;
    m = std::max(m, d);
  }
  return m;
}

double relative_error(const Tensor& a, const Tensor& b) {
  FG_CHECK(a.shape() == b.shape(), "relative_error: ", a.shape_str(), " vs ", b.shape_str());
  auto va = a.to_vector(), vb = b.to_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    if (!std::isfinite(va[i]) || !std::isfinite(vb[i])) return NAN;
    num += (va[i] - vb[i]) * (va[i] - vb[i]);
    den += vb[i] * vb[i];
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

bool has_non_finite(const Tensor& t) {
  for (double v : t.to_vector())
    if (!std::isfinite(v)) return true;
  return false;
}

double sum(const Tensor& t) {
  double s = 0;
  for (double v : t.to_vector()) s += v;
  return s;
}

void check_defined(const char* op, const char* name, const Tensor& t) {
  FG_CHECK(t.defined(), op, ": ", name, " is undefined");
}

void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected) {
  check_defined(op, name, t);
  FG_CHECK(t.shape() == expected, op, ": ", name, " is ", t.shape_str(), " but expected ",
           fg::shape_str(expected));
}

void check_dtype(const char* op, const char* name, const Tensor& t, DType expected) {
  check_defined(op, name, t);
  FG_CHECK(t.dtype() == expected, op, ": ", name, " is ", dtype_name(t.dtype()), " but expected ",
           dtype_name(expected));
}

void check_same_device(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                       const Tensor& b) {
  FG_CHECK(a.device() == b.device(), op, ": ", name_a, " is on ", a.device().str(), " but ",
           name_b, " is on ", b.device().str());
}

}  // namespace fg
