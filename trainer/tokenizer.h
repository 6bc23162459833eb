// Tokenizers for text corpora: "byte" (id = byte value, vocab 256) and "char"
// (the sorted distinct bytes of a text, so tinyshakespeare needs only 65 ids).
// The kind and the char vocab are what the token file and the checkpoint store.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace fg::trainer {

class Tokenizer {
 public:
  static Tokenizer byte_level();
  // The distinct bytes of `text`, sorted; throws on empty text.
  static Tokenizer char_level_from_text(const std::string& text);
  // `vocab` lists the characters in id order; must be non-empty and distinct.
  static Tokenizer char_level_from_vocab(std::vector<uint8_t> vocab);

  // char: a character outside the vocab is an error naming it.
  std::vector<int32_t> encode(const std::string& text) const;
  // An id outside [0, vocab_size) is an error.
  std::string decode(const std::vector<int32_t>& ids) const;

  int64_t vocab_size() const { return kind_ == "byte" ? 256 : static_cast<int64_t>(vocab_.size()); }
  const std::string& kind() const { return kind_; }  // "byte" or "char"
  // char: the characters in id order; byte: empty (the id is the byte).
  const std::vector<uint8_t>& vocab() const { return vocab_; }

 private:
  Tokenizer(std::string kind, std::vector<uint8_t> vocab);

  std::string kind_;
  std::vector<uint8_t> vocab_;
  std::array<int32_t, 256> id_of_byte_;  // -1: not in the vocab
};

// "'a' (byte 97)" or "byte 10" for bytes that do not print; for error messages.
std::string describe_byte(uint8_t byte);

}  // namespace fg::trainer
