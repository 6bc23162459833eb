// Token files: a corpus tokenized once ("prepare") and memory-mapped by every
// run. Layout, little-endian:
//   0  char[8]  magic "FGTOKEN1"
//   8  uint32   format_version (1)
//   12 uint32   tokenizer kind (0 byte, 1 char)
//   16 uint64   vocab_size (byte: 256; char: vocab_len)
//   24 uint64   token_count
//   32 uint32   vocab_len (byte: 0)
//   36 uint8    vocab[vocab_len] (char: the characters in id order)
//      zero padding up to a multiple of 8 bytes, so the ids are aligned
//      uint16   ids[token_count]
// Loading validates all of it and names the file in every error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "trainer/tokenizer.h"

namespace fg::trainer {

inline constexpr char kTokenFileMagic[8] = {'F', 'G', 'T', 'O', 'K', 'E', 'N', '1'};
inline constexpr uint32_t kTokenFileVersion = 1;

// A read-only memory map of a whole file; unmaps on destruction.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;  // null for an empty file
  size_t size_ = 0;
};

// A text file read and tokenized in memory.
struct EncodedText {
  Tokenizer tokenizer;
  std::vector<int32_t> tokens;
};

// Reads `text_path` and tokenizes it with `tokenizer_kind` ("byte" or "char";
// char builds its vocab from the text). Empty or unreadable files are errors.
EncodedText encode_text_file(const std::string& text_path, const std::string& tokenizer_kind);

// Writes a token file atomically (a temp file beside it, fsync, rename), so an
// existing `out_path` is either replaced whole or left untouched.
void write_token_file(const std::string& out_path, const std::vector<int32_t>& tokens,
                      const Tokenizer& tokenizer);

// encode_text_file + write_token_file.
void prepare_token_file(const std::string& text_path, const std::string& out_path,
                        const std::string& tokenizer_kind);

// A mapped, validated token file. Move-only; share it through a shared_ptr.
class TokenFile {
 public:
  explicit TokenFile(const std::string& path);  // throws fg::Error naming the file

  // True when `path` opens and starts with the magic (text otherwise).
  static bool is_token_file(const std::string& path);

  const std::string& path() const { return path_; }
  const uint16_t* data() const { return tokens_; }
  int64_t size() const { return count_; }
  std::span<const uint16_t> tokens() const { return {tokens_, static_cast<size_t>(count_)}; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  int64_t vocab_size() const { return tokenizer_.vocab_size(); }

 private:
  std::string path_;
  MappedFile map_;
  Tokenizer tokenizer_;
  const uint16_t* tokens_ = nullptr;  // into map_
  int64_t count_ = 0;
};

}  // namespace fg::trainer
