#include "trainer/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "core/error.h"

namespace fg::trainer {

// The ids are read in place from the map, so the file's byte order must be the host's.
static_assert(std::endian::native == std::endian::little, "token files are little-endian");

namespace {

constexpr size_t kFixedHeaderBytes = 36;  // magic .. vocab_len
constexpr size_t kIdAlignment = 8;
constexpr uint32_t kKindByte = 0, kKindChar = 1;

size_t data_offset_for(size_t vocab_len) {
  return (kFixedHeaderBytes + vocab_len + kIdAlignment - 1) / kIdAlignment * kIdAlignment;
}

// A POSIX file descriptor, closed on destruction.
class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now so that a failed close (lost delayed write) can be reported.
  int close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// Removes a temp file on scope exit unless release()d (after the rename).
class TempFileGuard {
 public:
  explicit TempFileGuard(std::string path) : path_(std::move(path)) {}
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  ~TempFileGuard() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  void release() { path_.clear(); }

 private:
  std::string path_;
};

void write_all(int fd, const void* bytes, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(bytes);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    FG_CHECK(w > 0, path, ": cannot write: ", std::strerror(errno));
    p += w;
    n -= static_cast<size_t>(w);
  }
}

template <class T>
void put(std::vector<uint8_t>& out, T value) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(&value);
  out.insert(out.end(), bytes, bytes + sizeof(T));
}

template <class T>
T get(const uint8_t* at) {
  T value;
  std::memcpy(&value, at, sizeof(T));
  return value;
}

}  // namespace

// ---- MappedFile ----

MappedFile::MappedFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  FG_CHECK(fd.get() >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  FG_CHECK(::fstat(fd.get(), &st) == 0, path, ": cannot stat: ", std::strerror(errno));
  FG_CHECK(S_ISREG(st.st_mode), path, ": not a regular file");
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) return;  // mmap rejects length 0; an empty map is valid
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  FG_CHECK(p != MAP_FAILED, path, ": cannot mmap ", size_, " bytes: ", std::strerror(errno));
  data_ = static_cast<const uint8_t*>(p);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

// ---- writing ----

EncodedText encode_text_file(const std::string& text_path, const std::string& tokenizer_kind) {
  FG_CHECK(tokenizer_kind == "byte" || tokenizer_kind == "char", text_path, ": unknown tokenizer '",
           tokenizer_kind, "' (use byte or char)");
  std::ifstream in(text_path, std::ios::binary);
  FG_CHECK(in, text_path, ": cannot open for reading: ", std::strerror(errno));
  std::ostringstream buf;
  buf << in.rdbuf();
  FG_CHECK(!in.bad(), text_path, ": read error");
  std::string text = std::move(buf).str();
  FG_CHECK(!text.empty(), text_path, ": the text file is empty, so there is nothing to tokenize");
  Tokenizer tokenizer =
      tokenizer_kind == "byte" ? Tokenizer::byte_level() : Tokenizer::char_level_from_text(text);
  std::vector<int32_t> tokens = tokenizer.encode(text);
  return {std::move(tokenizer), std::move(tokens)};
}

void write_token_file(const std::string& out_path, const std::vector<int32_t>& tokens,
                      const Tokenizer& tokenizer) {
  const int64_t vocab = tokenizer.vocab_size();
  FG_CHECK(!tokens.empty(), out_path, ": refusing to write a token file with no tokens");
  for (size_t i = 0; i < tokens.size(); ++i)
    FG_CHECK(tokens[i] >= 0 && tokens[i] < vocab, out_path, ": token ", i, " is ", tokens[i],
             ", outside the vocab [0, ", vocab, ")");

  std::vector<uint8_t> header;
  header.insert(header.end(), kTokenFileMagic, kTokenFileMagic + sizeof(kTokenFileMagic));
  put<uint32_t>(header, kTokenFileVersion);
  put<uint32_t>(header, tokenizer.kind() == "byte" ? kKindByte : kKindChar);
  put<uint64_t>(header, static_cast<uint64_t>(vocab));
  put<uint64_t>(header, tokens.size());
  put<uint32_t>(header, static_cast<uint32_t>(tokenizer.vocab().size()));
  header.insert(header.end(), tokenizer.vocab().begin(), tokenizer.vocab().end());
  header.resize(data_offset_for(tokenizer.vocab().size()), 0);

  // The pid keeps two processes preparing the same file from sharing a temp file.
  const std::string tmp_path = out_path + ".tmp." + std::to_string(::getpid());
  TempFileGuard guard(tmp_path);
  UniqueFd fd(::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  FG_CHECK(fd.get() >= 0, tmp_path, ": cannot create: ", std::strerror(errno));
  write_all(fd.get(), header.data(), header.size(), tmp_path);
  constexpr size_t kChunk = 1 << 16;  // ids are narrowed to uint16 a chunk at a time
  std::vector<uint16_t> chunk;
  for (size_t start = 0; start < tokens.size(); start += kChunk) {
    size_t end = std::min(tokens.size(), start + kChunk);
    chunk.assign(tokens.begin() + start, tokens.begin() + end);
    write_all(fd.get(), chunk.data(), chunk.size() * sizeof(uint16_t), tmp_path);
  }
  FG_CHECK(::fsync(fd.get()) == 0, tmp_path, ": fsync failed: ", std::strerror(errno));
  FG_CHECK(fd.close() == 0, tmp_path, ": close failed: ", std::strerror(errno));
  FG_CHECK(::rename(tmp_path.c_str(), out_path.c_str()) == 0, out_path,
           ": cannot rename the temp file into place: ", std::strerror(errno));
  guard.release();
  // Make the rename itself durable.
  std::string dir = std::filesystem::path(out_path).parent_path().string();
  UniqueFd dir_fd(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() >= 0) ::fsync(dir_fd.get());
}

void prepare_token_file(const std::string& text_path, const std::string& out_path,
                        const std::string& tokenizer_kind) {
  EncodedText encoded = encode_text_file(text_path, tokenizer_kind);
  write_token_file(out_path, encoded.tokens, encoded.tokenizer);
}

// ---- reading ----

bool TokenFile::is_token_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[sizeof(kTokenFileMagic)];
  if (!in.read(magic, sizeof(magic))) return false;
  return std::memcmp(magic, kTokenFileMagic, sizeof(magic)) == 0;
}

TokenFile::TokenFile(const std::string& path)
    : path_(path), map_(path), tokenizer_(Tokenizer::byte_level()) {
  const uint8_t* p = map_.data();
  const size_t size = map_.size();
  FG_CHECK(size >= sizeof(kTokenFileMagic) &&
               std::memcmp(p, kTokenFileMagic, sizeof(kTokenFileMagic)) == 0,
           path, ": not a fusegpt token file (the magic is not FGTOKEN1)");
  FG_CHECK(size >= kFixedHeaderBytes, path, ": truncated header: the file is ", size,
           " bytes but the header needs ", kFixedHeaderBytes);
  const uint32_t version = get<uint32_t>(p + 8);
  const uint32_t kind = get<uint32_t>(p + 12);
  const uint64_t vocab_size = get<uint64_t>(p + 16);
  const uint64_t count = get<uint64_t>(p + 24);
  const uint32_t vocab_len = get<uint32_t>(p + 32);
  FG_CHECK(version == kTokenFileVersion, path, ": unsupported format version ", version,
           " (this build reads version ", kTokenFileVersion, ")");
  FG_CHECK(kind == kKindByte || kind == kKindChar, path, ": unknown tokenizer kind ", kind,
           " (0 byte, 1 char)");
  if (kind == kKindByte) {
    FG_CHECK(vocab_size == 256 && vocab_len == 0, path,
             ": a byte tokenizer has vocab size 256 and no vocab list, but the header says",
             " vocab size ", vocab_size, " and vocab length ", vocab_len);
  } else {
    FG_CHECK(vocab_size >= 1 && vocab_size <= 256 && vocab_len == vocab_size, path,
             ": a char tokenizer needs 1..256 symbols listed in full, but the header says",
             " vocab size ", vocab_size, " and vocab length ", vocab_len);
  }
  const size_t data_offset = data_offset_for(vocab_len);
  FG_CHECK(size >= data_offset, path, ": truncated header: the file is ", size,
           " bytes but the header needs ", data_offset);
  if (kind == kKindChar) {
    std::vector<uint8_t> vocab(p + kFixedHeaderBytes, p + kFixedHeaderBytes + vocab_len);
    std::vector<bool> seen(256, false);
    for (uint8_t c : vocab) {
      FG_CHECK(!seen[c], path, ": the char vocab lists ", describe_byte(c), " twice");
      seen[c] = true;
    }
    tokenizer_ = Tokenizer::char_level_from_vocab(std::move(vocab));
  }
  const size_t id_bytes = size - data_offset;
  FG_CHECK(count > 0, path, ": the header says the file holds no tokens");
  FG_CHECK(id_bytes / sizeof(uint16_t) >= count, path, ": truncated: header says ", count,
           " tokens but the file holds ", id_bytes / sizeof(uint16_t));
  FG_CHECK(id_bytes == count * sizeof(uint16_t), path, ": ", id_bytes - count * sizeof(uint16_t),
           " unexpected bytes after the ", count, " tokens the header declares");
  tokens_ = reinterpret_cast<const uint16_t*>(p + data_offset);
  count_ = static_cast<int64_t>(count);
  // One pass over the ids now means no sampled batch can index past the embedding later.
  for (int64_t i = 0; i < count_; ++i)
    FG_CHECK(tokens_[i] < vocab_size, path, ": token ", i, " is ", tokens_[i],
             " but the vocab size is ", vocab_size);
}

}  // namespace fg::trainer
