// HDF5 helpers: checked calls, tensors and attributes, atomic writes.
#include "trainer/hdf5.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace fg::trainer {

namespace {

// Raw data is chunked in pieces of about this size, each with a Fletcher32 checksum,
// so a damaged file gives an error instead of silently wrong weights.
constexpr size_t kChunkBytes = size_t{4} << 20;

// The innermost entry of HDF5's error stack: the most specific reason
// ("truncated file: eof = ...", "file signature not found").
herr_t innermost_error(unsigned n, const H5E_error2_t* err, void* out) {
  if (n == 0 && err->desc) *static_cast<std::string*>(out) = err->desc;
  return 0;
}

std::string errno_text() {
  return std::strerror(errno);
}

// "/model/x" for name "x" under "/model"; "/x" under the root.
std::string child_path(hid_t loc, const std::string& name) {
  std::string parent = h5_path_of(loc);
  return (parent == "/" ? "" : parent) + "/" + name;
}

// Creation properties shared by groups and datasets: no timestamps, so the same
// state always gives the same bytes.
void set_no_timestamps(hid_t ocpl, const std::string& file) {
  FG_H5_CHECK(H5Pset_obj_track_times(ocpl, false), file);
}

H5Datatype string_type(const std::string& file) {
  H5Datatype t(FG_H5_CHECK(H5Tcopy(H5T_C_S1), file));
  FG_H5_CHECK(H5Tset_size(t.id(), H5T_VARIABLE), file);
  FG_H5_CHECK(H5Tset_cset(t.id(), H5T_CSET_UTF8), file);
  return t;
}

H5Dataspace scalar_space(const std::string& file) {
  return H5Dataspace(FG_H5_CHECK(H5Screate(H5S_SCALAR), file));
}

// Writes `count` elements of `mem_type` from `data` as a dataset of `file_type` and `shape`.
void write_dataset(hid_t loc, const std::string& name, const Shape& shape, hid_t file_type,
                   hid_t mem_type, size_t elem_size, const void* data, const std::string& file) {
  const std::string where = child_path(loc, name);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  H5Dataspace space(dims.empty() ? FG_H5_CHECK(H5Screate(H5S_SCALAR), file, where)
                                 : FG_H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()),
                                                                dims.data(), nullptr),
                                               file, where));
  H5PropList dcpl(FG_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE), file));
  set_no_timestamps(dcpl.id(), file);
  const int64_t numel = shape_numel(shape);
  if (!dims.empty() && numel > 0) {
    // Chunks are whole rows of the leading dimension, about kChunkBytes each.
    size_t row_bytes = elem_size * static_cast<size_t>(numel / shape[0]);
    std::vector<hsize_t> chunk = dims;
    chunk[0] = std::clamp<hsize_t>(kChunkBytes / row_bytes, 1, dims[0]);
    FG_H5_CHECK(H5Pset_chunk(dcpl.id(), static_cast<int>(chunk.size()), chunk.data()), file, where);
    FG_H5_CHECK(H5Pset_fletcher32(dcpl.id()), file, where);
  }
  H5Dataset ds(FG_H5_CHECK(
      H5Dcreate2(loc, name.c_str(), file_type, space.id(), H5P_DEFAULT, dcpl.id(), H5P_DEFAULT),
      file, where));
  if (numel > 0)
    FG_H5_CHECK(H5Dwrite(ds.id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), file, where);
  FG_H5_CHECK(ds.close(), file, where);
}

// Opens a dataset and returns its shape; checks that the stored type has class `cls`.
H5Dataset open_dataset(hid_t loc, const std::string& name, H5T_class_t cls, const char* want,
                       Shape* shape, const std::string& file) {
  const std::string where = child_path(loc, name);
  FG_CHECK(h5_has_link(loc, name, file), file, ": missing dataset ", where);
  H5Dataset ds(FG_H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), file, where));
  H5Datatype type(FG_H5_CHECK(H5Dget_type(ds.id()), file, where));
  H5T_class_t got = FG_H5_CHECK(H5Tget_class(type.id()), file, where);
  FG_CHECK(got == cls, file, ": ", where, " is not stored as ", want);
  H5Dataspace space(FG_H5_CHECK(H5Dget_space(ds.id()), file, where));
  H5S_class_t kind = FG_H5_CHECK(H5Sget_simple_extent_type(space.id()), file, where);
  FG_CHECK(kind == H5S_SIMPLE || kind == H5S_SCALAR, file, ": ", where, " has no data");
  int rank = FG_H5_CHECK(H5Sget_simple_extent_ndims(space.id()), file, where);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  FG_H5_CHECK(H5Sget_simple_extent_dims(space.id(), dims.data(), nullptr), file, where);
  shape->assign(dims.begin(), dims.end());
  return ds;
}

H5Attribute open_attr(hid_t loc, const std::string& name, const std::string& file) {
  FG_CHECK(h5_has_attr(loc, name, file), file, ": ", h5_path_of(loc), " has no attribute '", name,
           "'");
  H5Attribute attr(
      FG_H5_CHECK(H5Aopen(loc, name.c_str(), H5P_DEFAULT), file, child_path(loc, name)));
  H5Dataspace space(FG_H5_CHECK(H5Aget_space(attr.id()), file));
  hssize_t n = FG_H5_CHECK(H5Sget_simple_extent_npoints(space.id()), file);
  FG_CHECK(n == 1, file, ": attribute '", name, "' of ", h5_path_of(loc), " holds ", n,
           " values, expected one");
  return attr;
}

void write_attr(hid_t loc, const std::string& name, hid_t file_type, hid_t mem_type,
                const void* value, const std::string& file) {
  H5Dataspace space = scalar_space(file);
  const std::string where = child_path(loc, name);
  H5Attribute attr(FG_H5_CHECK(
      H5Acreate2(loc, name.c_str(), file_type, space.id(), H5P_DEFAULT, H5P_DEFAULT), file, where));
  FG_H5_CHECK(H5Awrite(attr.id(), mem_type, value), file, where);
}

const char* kind_name(H5AttrKind kind) {
  switch (kind) {
    case H5AttrKind::Int:
      return "an integer";
    case H5AttrKind::Float:
      return "a float";
    case H5AttrKind::String:
      return "a string";
    case H5AttrKind::Other:
      break;
  }
  return "of another type";
}

H5AttrKind attr_kind(hid_t attr, const std::string& file) {
  H5Datatype type(FG_H5_CHECK(H5Aget_type(attr), file));
  switch (FG_H5_CHECK(H5Tget_class(type.id()), file)) {
    case H5T_INTEGER:
      return H5AttrKind::Int;
    case H5T_FLOAT:
      return H5AttrKind::Float;
    case H5T_STRING:
      return H5AttrKind::String;
    default:
      return H5AttrKind::Other;
  }
}

void fsync_path(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  FG_CHECK(fd >= 0, path, ": cannot open for fsync: ", errno_text());
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  FG_CHECK(rc == 0, path, ": fsync failed: ", std::strerror(err));
}

// H5Fcreate/H5Fopen access properties: take a lock where the file system supports it.
H5PropList file_access(const std::string& file) {
  H5PropList fapl(FG_H5_CHECK(H5Pcreate(H5P_FILE_ACCESS), file));
#if H5_VERSION_GE(1, 10, 7)
  FG_H5_CHECK(H5Pset_file_locking(fapl.id(), true, true), file);
#endif
  return fapl;
}

}  // namespace

void h5_fail(const char* call, const std::string& file, const char* src, int line,
             const std::string& context) {
  std::string detail;  // read it before any other HDF5 call clears the stack
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, &detail);
  std::string fn(call);
  fn = fn.substr(0, fn.find('('));
  std::string message = file + ": " + fn + " failed";
  if (!context.empty()) message += " on " + context;
  if (!detail.empty()) message += ": " + detail;
  throw_error(src, line, nullptr, message);
}

void h5_silence_errors() {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

H5File h5_create_file(const std::string& path) {
  h5_silence_errors();
  H5PropList fapl = file_access(path);
  // The 1.10 format checksums all metadata (superblock, object headers, indexes).
  FG_H5_CHECK(H5Pset_libver_bounds(fapl.id(), H5F_LIBVER_V110, H5F_LIBVER_LATEST), path);
  // Closing the file fails if an object in it is still open: a bug, not a silent delay.
  FG_H5_CHECK(H5Pset_fclose_degree(fapl.id(), H5F_CLOSE_SEMI), path);
  return H5File(FG_H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id()), path));
}

H5File h5_open_file(const std::string& path) {
  h5_silence_errors();
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    FG_CHECK(errno != ENOENT, path, ": no such file");
    FG_THROW(path, ": cannot access: ", errno_text());
  }
  FG_CHECK(!S_ISDIR(st.st_mode), path, ": is a directory, not a file");
  FG_CHECK(::access(path.c_str(), R_OK) == 0, path, ": not readable: ", errno_text());
  FG_CHECK(st.st_size > 0, path, ": empty file, not HDF5");
  htri_t is_hdf5 = FG_H5_CHECK(H5Fis_hdf5(path.c_str()), path);
  FG_CHECK(is_hdf5 > 0, path, ": not an HDF5 file");
  H5PropList fapl = file_access(path);
  return H5File(FG_H5_CHECK(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.id()), path));
}

void h5_write_file_atomically(const std::string& path,
                              const std::function<void(hid_t, const std::string&)>& fill) {
  const std::string tmp = path + ".tmp";
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  FG_CHECK(std::filesystem::is_directory(dir, ec), path, ": cannot save, directory ", dir.string(),
           " does not exist");
  try {
    H5File file = h5_create_file(tmp);
    fill(file.id(), tmp);
    FG_H5_CHECK(H5Fflush(file.id(), H5F_SCOPE_GLOBAL), tmp);
    FG_H5_CHECK(file.close(), tmp);
    fsync_path(tmp, O_RDONLY);
    FG_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, path, ": cannot rename ", tmp,
             " over it: ", errno_text());
  } catch (...) {
    ::unlink(tmp.c_str());  // may not exist yet; path is untouched either way
    throw;
  }
  // The rename is durable only once the directory entry is on disk.
  fsync_path(dir.string(), O_RDONLY | O_DIRECTORY);
}

H5Group h5_create_group(hid_t loc, const std::string& name, const std::string& file) {
  H5PropList gcpl(FG_H5_CHECK(H5Pcreate(H5P_GROUP_CREATE), file));
  FG_H5_CHECK(H5Pset_link_creation_order(gcpl.id(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED),
              file);
  set_no_timestamps(gcpl.id(), file);
  return H5Group(FG_H5_CHECK(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, gcpl.id(), H5P_DEFAULT),
                             file, child_path(loc, name)));
}

H5Group h5_open_group(hid_t loc, const std::string& name, const std::string& file) {
  const std::string where = child_path(loc, name);
  FG_CHECK(h5_has_link(loc, name, file), file, ": missing group ", where);
  H5Object obj(FG_H5_CHECK(H5Oopen(loc, name.c_str(), H5P_DEFAULT), file, where));
  FG_CHECK(H5Iget_type(obj.id()) == H5I_GROUP, file, ": ", where, " is not a group");
  return H5Group(FG_H5_CHECK(H5Gopen2(loc, name.c_str(), H5P_DEFAULT), file, where));
}

bool h5_has_link(hid_t loc, const std::string& name, const std::string& file) {
  return FG_H5_CHECK(H5Lexists(loc, name.c_str(), H5P_DEFAULT), file, child_path(loc, name)) > 0;
}

std::string h5_path_of(hid_t obj) {
  ssize_t n = H5Iget_name(obj, nullptr, 0);
  if (n <= 0) return "?";
  std::string name(static_cast<size_t>(n) + 1, '\0');
  H5Iget_name(obj, name.data(), name.size());
  name.resize(static_cast<size_t>(n));
  return name;
}

void h5_write_tensor(hid_t loc, const std::string& name, const Tensor& t, const std::string& file) {
  FG_CHECK(t.defined(), file, ": tensor ", name, " is undefined");
  FG_CHECK(t.dtype() != DType::I32, file, ": tensor ", name, " is ", t.describe(),
           "; checkpoints hold float tensors");
  const bool ready = t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous();
  Tensor f32 = ready ? t : t.to(Device::cpu(), DType::F32);  // to() is contiguous
  write_dataset(loc, name, f32.shape(), H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, sizeof(float),
                f32.numel() > 0 ? f32.raw_data() : nullptr, file);
}

Tensor h5_read_tensor(hid_t loc, const std::string& name, const std::string& file) {
  Shape shape;
  H5Dataset ds = open_dataset(loc, name, H5T_FLOAT, "float32", &shape, file);
  Tensor t = Tensor::empty(shape, DType::F32);
  if (t.numel() > 0)
    FG_H5_CHECK(H5Dread(ds.id(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw_data()),
                file, child_path(loc, name));
  return t;
}

void h5_write_bytes(hid_t loc, const std::string& name, const std::vector<uint8_t>& bytes,
                    const std::string& file) {
  write_dataset(loc, name, {static_cast<int64_t>(bytes.size())}, H5T_STD_U8LE, H5T_NATIVE_UINT8, 1,
                bytes.data(), file);
}

std::vector<uint8_t> h5_read_bytes(hid_t loc, const std::string& name, const std::string& file) {
  Shape shape;
  H5Dataset ds = open_dataset(loc, name, H5T_INTEGER, "uint8", &shape, file);
  FG_CHECK(shape.size() == 1, file, ": ", child_path(loc, name), " is ", shape_str(shape),
           ", expected one dimension");
  std::vector<uint8_t> bytes(static_cast<size_t>(shape[0]));
  if (!bytes.empty())
    FG_H5_CHECK(H5Dread(ds.id(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()),
                file, child_path(loc, name));
  return bytes;
}

std::vector<std::string> h5_list_datasets(hid_t group, const std::string& file) {
  H5PropList gcpl(FG_H5_CHECK(H5Gget_create_plist(group), file));
  unsigned order_flags = 0;
  FG_H5_CHECK(H5Pget_link_creation_order(gcpl.id(), &order_flags), file);
  H5_index_t index = (order_flags & H5P_CRT_ORDER_INDEXED) ? H5_INDEX_CRT_ORDER : H5_INDEX_NAME;
  H5G_info_t info;
  FG_H5_CHECK(H5Gget_info(group, &info), file, h5_path_of(group));
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    ssize_t n =
        FG_H5_CHECK(H5Lget_name_by_idx(group, ".", index, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT),
                    file, h5_path_of(group));
    std::string name(static_cast<size_t>(n) + 1, '\0');
    FG_H5_CHECK(H5Lget_name_by_idx(group, ".", index, H5_ITER_INC, i, name.data(), name.size(),
                                   H5P_DEFAULT),
                file, h5_path_of(group));
    name.resize(static_cast<size_t>(n));
    H5Object obj(
        FG_H5_CHECK(H5Oopen(group, name.c_str(), H5P_DEFAULT), file, child_path(group, name)));
    if (H5Iget_type(obj.id()) == H5I_DATASET) names.push_back(std::move(name));
  }
  return names;
}

void h5_write_attr_int(hid_t loc, const std::string& name, int64_t value, const std::string& file) {
  write_attr(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value, file);
}

void h5_write_attr_double(hid_t loc, const std::string& name, double value,
                          const std::string& file) {
  write_attr(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value, file);
}

void h5_write_attr_string(hid_t loc, const std::string& name, const std::string& value,
                          const std::string& file) {
  H5Datatype type = string_type(file);
  const char* c = value.c_str();
  write_attr(loc, name, type.id(), type.id(), &c, file);
}

bool h5_has_attr(hid_t loc, const std::string& name, const std::string& file) {
  return FG_H5_CHECK(H5Aexists(loc, name.c_str()), file, child_path(loc, name)) > 0;
}

H5AttrKind h5_attr_kind(hid_t loc, const std::string& name, const std::string& file) {
  return attr_kind(open_attr(loc, name, file).id(), file);
}

int64_t h5_read_attr_int(hid_t loc, const std::string& name, const std::string& file) {
  H5Attribute attr = open_attr(loc, name, file);
  H5AttrKind kind = attr_kind(attr.id(), file);
  FG_CHECK(kind == H5AttrKind::Int, file, ": attribute '", name, "' of ", h5_path_of(loc), " is ",
           kind_name(kind), ", expected an integer");
  int64_t value = 0;
  FG_H5_CHECK(H5Aread(attr.id(), H5T_NATIVE_INT64, &value), file, child_path(loc, name));
  return value;
}

double h5_read_attr_double(hid_t loc, const std::string& name, const std::string& file) {
  H5Attribute attr = open_attr(loc, name, file);
  H5AttrKind kind = attr_kind(attr.id(), file);
  FG_CHECK(kind == H5AttrKind::Float || kind == H5AttrKind::Int, file, ": attribute '", name,
           "' of ", h5_path_of(loc), " is ", kind_name(kind), ", expected a number");
  double value = 0;
  FG_H5_CHECK(H5Aread(attr.id(), H5T_NATIVE_DOUBLE, &value), file, child_path(loc, name));
  return value;
}

std::string h5_read_attr_string(hid_t loc, const std::string& name, const std::string& file) {
  H5Attribute attr = open_attr(loc, name, file);
  H5AttrKind kind = attr_kind(attr.id(), file);
  FG_CHECK(kind == H5AttrKind::String, file, ": attribute '", name, "' of ", h5_path_of(loc),
           " is ", kind_name(kind), ", expected a string");
  H5Datatype stored(FG_H5_CHECK(H5Aget_type(attr.id()), file));
  const std::string where = child_path(loc, name);
  if (FG_H5_CHECK(H5Tis_variable_str(stored.id()), file, where) > 0) {
    H5Datatype mem = string_type(file);
    char* c = nullptr;
    FG_H5_CHECK(H5Aread(attr.id(), mem.id(), &c), file, where);
    std::string value = c ? c : "";
    H5free_memory(c);
    return value;
  }
  // Fixed-length (as h5py writes numpy bytes): read into one more byte, null-terminated.
  size_t size = FG_H5_CHECK(H5Tget_size(stored.id()), file, where) + 1;
  H5Datatype mem(FG_H5_CHECK(H5Tcopy(H5T_C_S1), file));
  FG_H5_CHECK(H5Tset_size(mem.id(), size), file);
  std::string buf(size, '\0');
  FG_H5_CHECK(H5Aread(attr.id(), mem.id(), buf.data()), file, where);
  return std::string(buf.c_str());
}

std::vector<std::string> h5_list_attrs(hid_t loc, const std::string& file) {
  std::vector<std::string> names;
  auto collect = [](hid_t, const char* name, const H5A_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->emplace_back(name);
    return 0;
  };
  FG_H5_CHECK(H5Aiterate2(loc, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect, &names), file,
              h5_path_of(loc));
  return names;
}

}  // namespace fg::trainer
