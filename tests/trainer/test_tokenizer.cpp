// Tokenizers: roundtrips, the char vocab of tinyshakespeare, and errors.
#include <fstream>
#include <sstream>

#include "test_util.h"
#include "trainer/tokenizer.h"

using fg::trainer::Tokenizer;

TEST(Tokenizer, ByteRoundtripsEveryByte) {
  Tokenizer tok = Tokenizer::byte_level();
  EXPECT_EQ(tok.kind(), "byte");
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_TRUE(tok.vocab().empty());
  std::string text;
  for (int b = 0; b < 256; ++b) text.push_back(static_cast<char>(b));
  std::vector<int32_t> ids = tok.encode(text);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
  EXPECT_EQ(tok.decode(ids), text);
}

TEST(Tokenizer, CharVocabIsSortedDistinctBytes) {
  Tokenizer tok = Tokenizer::char_level_from_text("hello world");
  EXPECT_EQ(tok.kind(), "char");
  EXPECT_EQ(tok.vocab(), (std::vector<uint8_t>{' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w'}));
  EXPECT_EQ(tok.vocab_size(), 8);
  std::vector<int32_t> ids = tok.encode("hello");
  EXPECT_EQ(ids, (std::vector<int32_t>{3, 2, 4, 4, 5}));
  EXPECT_EQ(tok.decode(tok.encode("world hello")), "world hello");
}

TEST(Tokenizer, CharFromVocabMatchesFromText) {
  Tokenizer a = Tokenizer::char_level_from_text("abcabc\n");
  Tokenizer b = Tokenizer::char_level_from_vocab(a.vocab());
  EXPECT_EQ(a.encode("cab\n"), b.encode("cab\n"));
  // A vocab in a non-sorted order is kept as given: ids follow the list.
  Tokenizer c = Tokenizer::char_level_from_vocab({'z', 'a'});
  EXPECT_EQ(c.encode("az"), (std::vector<int32_t>{1, 0}));
}

TEST(Tokenizer, Errors) {
  Tokenizer tok = Tokenizer::char_level_from_text("abc");
  EXPECT_FG_ERROR(tok.encode("abx"), "character 'x' (byte 120) at position 2");
  EXPECT_FG_ERROR(tok.encode("a\n"), "character byte 10");
  EXPECT_FG_ERROR(tok.decode({0, 3}), "id 3 at position 1 is outside the char vocabulary [0, 3)");
  EXPECT_FG_ERROR(Tokenizer::byte_level().decode({-1}), "outside the byte vocabulary");
  EXPECT_FG_ERROR(Tokenizer::char_level_from_text(""), "empty text");
  EXPECT_FG_ERROR(Tokenizer::char_level_from_vocab({'a', 'b', 'a'}), "'a' (byte 97) twice");
  EXPECT_FG_ERROR(Tokenizer::char_level_from_vocab({}), "at least one character");
}

TEST(Tokenizer, TinyShakespeareHas65Symbols) {
  std::ifstream in(FG_SOURCE_DIR "/../shared/data/tinyshakespeare.txt", std::ios::binary);
  if (!in) GTEST_SKIP() << "tinyshakespeare.txt not found";
  std::stringstream buf;
  buf << in.rdbuf();
  std::string text = buf.str();
  Tokenizer tok = Tokenizer::char_level_from_text(text);
  EXPECT_EQ(tok.vocab_size(), 65);
  EXPECT_EQ(tok.vocab().front(), '\n');
  EXPECT_EQ(tok.decode(tok.encode(text)), text);
}
