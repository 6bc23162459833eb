#include "trainer/tokenizer.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"

namespace fg::trainer {

std::string describe_byte(uint8_t byte) {
  if (std::isprint(byte)) return str_cat("'", static_cast<char>(byte), "' (byte ", int(byte), ")");
  return str_cat("byte ", int(byte));
}

Tokenizer::Tokenizer(std::string kind, std::vector<uint8_t> vocab)
    : kind_(std::move(kind)), vocab_(std::move(vocab)) {
  id_of_byte_.fill(-1);
  if (kind_ == "byte") {
    for (int b = 0; b < 256; ++b) id_of_byte_[b] = b;
    return;
  }
  FG_CHECK(!vocab_.empty(), "tokenizer: a char vocabulary needs at least one character");
  for (size_t id = 0; id < vocab_.size(); ++id) {
    FG_CHECK(id_of_byte_[vocab_[id]] < 0, "tokenizer: the char vocabulary lists ",
             describe_byte(vocab_[id]), " twice (ids ", id_of_byte_[vocab_[id]], " and ", id, ")");
    id_of_byte_[vocab_[id]] = static_cast<int32_t>(id);
  }
}

Tokenizer Tokenizer::byte_level() {
  return Tokenizer("byte", {});
}

Tokenizer Tokenizer::char_level_from_text(const std::string& text) {
  FG_CHECK(!text.empty(), "tokenizer: cannot build a char vocabulary from empty text");
  std::array<bool, 256> seen{};
  for (char c : text) seen[static_cast<uint8_t>(c)] = true;
  std::vector<uint8_t> vocab;
  for (int b = 0; b < 256; ++b)
    if (seen[b]) vocab.push_back(static_cast<uint8_t>(b));
  return Tokenizer("char", std::move(vocab));
}

Tokenizer Tokenizer::char_level_from_vocab(std::vector<uint8_t> vocab) {
  return Tokenizer("char", std::move(vocab));
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    uint8_t b = static_cast<uint8_t>(text[i]);
    int32_t id = id_of_byte_[b];
    FG_CHECK(id >= 0, "tokenizer: character ", describe_byte(b), " at position ", i,
             " is not in the char vocabulary of ", vocab_.size(), " symbols");
    ids[i] = id;
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    FG_CHECK(ids[i] >= 0 && ids[i] < vocab_size(), "tokenizer: id ", ids[i], " at position ", i,
             " is outside the ", kind_, " vocabulary [0, ", vocab_size(), ")");
    text[i] = static_cast<char>(kind_ == "byte" ? ids[i] : vocab_[ids[i]]);
  }
  return text;
}

}  // namespace fg::trainer
