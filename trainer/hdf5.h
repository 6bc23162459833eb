// Small HDF5 layer for checkpoints and gradient dumps: move-only owners of hid_t,
// FG_H5_CHECK (one-line fg::Error naming the call and the file), and helpers for
// float32 tensors, scalar attributes and atomic file writes. HDF5 1.10 C API only.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace fg::trainer {

// Owns one HDF5 id; Close is the H5?close function of its kind. Destructors never throw.
template <herr_t (*Close)(hid_t)>
class H5Handle {
 public:
  H5Handle() = default;
  explicit H5Handle(hid_t id) : id_(id) {}
  ~H5Handle() { reset(); }
  H5Handle(H5Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)) {}
  H5Handle& operator=(H5Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;

  hid_t id() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and returns HDF5's status (a file close may flush and fail).
  herr_t close() { return id_ >= 0 ? Close(std::exchange(id_, H5I_INVALID_HID)) : 0; }
  void reset() { (void)close(); }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

using H5File = H5Handle<H5Fclose>;
using H5Group = H5Handle<H5Gclose>;
using H5Dataset = H5Handle<H5Dclose>;
using H5Dataspace = H5Handle<H5Sclose>;
using H5Attribute = H5Handle<H5Aclose>;
using H5PropList = H5Handle<H5Pclose>;
using H5Datatype = H5Handle<H5Tclose>;
using H5Object = H5Handle<H5Oclose>;

// Throws "<file>: <H5Call> failed[ on <context>]: <HDF5's innermost error>".
[[noreturn]] void h5_fail(const char* call, const std::string& file, const char* src, int line,
                          const std::string& context);

template <class T, class... Context>
T h5_check(T result, const char* call, const std::string& file, const char* src, int line,
           const Context&... context) {
  if (result < 0) h5_fail(call, file, src, line, str_cat(context...));
  return result;
}

}  // namespace fg::trainer

// hid_t g = FG_H5_CHECK(H5Gopen2(file, "model", H5P_DEFAULT), path, "/model");
// Evaluates the call once, returns its result, throws when it is negative.
#define FG_H5_CHECK(call, file, ...) \
  ::fg::trainer::h5_check((call), #call, (file), __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)

namespace fg::trainer {

// Turns off HDF5's own error printing (errors become our one-line messages).
// Every helper that opens or creates a file calls it.
void h5_silence_errors();

// Files. `file` arguments below are the name used in error messages.
// Creates (truncates) a file in the checksummed HDF5 1.10 format.
H5File h5_create_file(const std::string& path);
// Opens read-only after checking it exists, is readable and is HDF5:
// "<path>: no such file", "<path>: not an HDF5 file", ...
H5File h5_open_file(const std::string& path);
// Writes path + ".tmp" with fill(file_id, tmp_name), flushes, closes, fsyncs, renames it
// over path and fsyncs the directory. On any failure the temp file is removed and path
// is left untouched.
void h5_write_file_atomically(const std::string& path,
                              const std::function<void(hid_t, const std::string&)>& fill);

// Groups; created groups track link creation order, so listings keep write order.
H5Group h5_create_group(hid_t loc, const std::string& name, const std::string& file);
H5Group h5_open_group(hid_t loc, const std::string& name, const std::string& file);
bool h5_has_link(hid_t loc, const std::string& name, const std::string& file);
// The object's path in its file ("/", "/model"), for messages.
std::string h5_path_of(hid_t obj);

// Tensors: any float dtype and device in memory, stored as a float32 dataset of the same
// shape (chunked, Fletcher32-checksummed). Reads give a contiguous f32 CPU tensor.
void h5_write_tensor(hid_t loc, const std::string& name, const Tensor& t, const std::string& file);
Tensor h5_read_tensor(hid_t loc, const std::string& name, const std::string& file);
// A 1-d uint8 dataset.
void h5_write_bytes(hid_t loc, const std::string& name, const std::vector<uint8_t>& bytes,
                    const std::string& file);
std::vector<uint8_t> h5_read_bytes(hid_t loc, const std::string& name, const std::string& file);
// Names of the datasets directly under a group, in creation order when the group tracks
// it, else in name order.
std::vector<std::string> h5_list_datasets(hid_t group, const std::string& file);

// Scalar attributes: int64, double, variable-length UTF-8 string.
void h5_write_attr_int(hid_t loc, const std::string& name, int64_t value, const std::string& file);
void h5_write_attr_double(hid_t loc, const std::string& name, double value,
                          const std::string& file);
void h5_write_attr_string(hid_t loc, const std::string& name, const std::string& value,
                          const std::string& file);
// Reads throw "<file>: <object> has no attribute '<name>'" when it is missing and name the
// stored type when it is not the one asked for (a double attribute also accepts integers).
int64_t h5_read_attr_int(hid_t loc, const std::string& name, const std::string& file);
double h5_read_attr_double(hid_t loc, const std::string& name, const std::string& file);
std::string h5_read_attr_string(hid_t loc, const std::string& name, const std::string& file);
bool h5_has_attr(hid_t loc, const std::string& name, const std::string& file);
enum class H5AttrKind { Int, Float, String, Other };
H5AttrKind h5_attr_kind(hid_t loc, const std::string& name, const std::string& file);
// Attribute names of an object, in name order.
std::vector<std::string> h5_list_attrs(hid_t loc, const std::string& file);

}  // namespace fg::trainer
