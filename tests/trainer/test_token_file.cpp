// Token files: prepare/load roundtrips and every validation error, each naming the file.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_util.h"
#include "trainer/token_file.h"

namespace fs = std::filesystem;
using namespace fg::trainer;

namespace {

// A fresh directory under /tmp, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("fg_test_token_file_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

// A valid byte-level token file holding ids 0..n-1 (mod 256).
std::string valid_file(const TempDir& dir, int n) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = i % 256;
  std::string path = dir.file("tokens.bin");
  write_token_file(path, ids, Tokenizer::byte_level());
  return path;
}

}  // namespace

TEST(TokenFile, PrepareAndLoadByte) {
  TempDir dir;
  std::string text = "To be, or not to be: that is the question.\n";
  write_bytes(dir.file("in.txt"), text);
  prepare_token_file(dir.file("in.txt"), dir.file("out.bin"), "byte");
  EXPECT_TRUE(TokenFile::is_token_file(dir.file("out.bin")));
  EXPECT_FALSE(TokenFile::is_token_file(dir.file("in.txt")));
  EXPECT_FALSE(TokenFile::is_token_file(dir.file("missing.bin")));
  TokenFile file(dir.file("out.bin"));
  EXPECT_EQ(file.size(), static_cast<int64_t>(text.size()));
  EXPECT_EQ(file.tokenizer().kind(), "byte");
  EXPECT_EQ(file.vocab_size(), 256);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(file.data()) % alignof(uint16_t), 0u);
  std::vector<int32_t> ids(file.tokens().begin(), file.tokens().end());
  EXPECT_EQ(file.tokenizer().decode(ids), text);
  // No temp file is left beside the output.
  int entries = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(dir.file(""))) ++entries;
  EXPECT_EQ(entries, 2);
}

TEST(TokenFile, PrepareAndLoadChar) {
  TempDir dir;
  std::string text = "abracadabra\n";
  write_bytes(dir.file("in.txt"), text);
  prepare_token_file(dir.file("in.txt"), dir.file("out.bin"), "char");
  TokenFile file(dir.file("out.bin"));
  EXPECT_EQ(file.tokenizer().kind(), "char");
  EXPECT_EQ(file.tokenizer().vocab(), (std::vector<uint8_t>{'\n', 'a', 'b', 'c', 'd', 'r'}));
  EXPECT_EQ(file.vocab_size(), 6);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(file.data()) % alignof(uint16_t), 0u);
  std::vector<int32_t> ids(file.tokens().begin(), file.tokens().end());
  EXPECT_EQ(file.tokenizer().decode(ids), text);
  // Moving keeps the mapped view valid.
  TokenFile moved = std::move(file);
  EXPECT_EQ(moved.tokens()[0], 1);
}

TEST(TokenFile, TinyShakespeareRoundtrip) {
  const std::string src = FG_SOURCE_DIR "/../shared/data/tinyshakespeare.txt";
  if (!fs::exists(src)) GTEST_SKIP() << "tinyshakespeare.txt not found";
  TempDir dir;
  prepare_token_file(src, dir.file("shakespeare.bin"), "char");
  TokenFile file(dir.file("shakespeare.bin"));
  EXPECT_EQ(file.vocab_size(), 65);
  EXPECT_EQ(file.size(), static_cast<int64_t>(fs::file_size(src)));
  std::vector<int32_t> ids(file.tokens().begin(), file.tokens().end());
  EXPECT_EQ(file.tokenizer().decode(ids), read_bytes(src));
}

TEST(TokenFile, BadMagic) {
  TempDir dir;
  std::string path = valid_file(dir, 100);
  std::string bytes = read_bytes(path);
  bytes[0] = 'X';
  write_bytes(path, bytes);
  EXPECT_FALSE(TokenFile::is_token_file(path));
  EXPECT_FG_ERROR(TokenFile{path}, path + ": not a fusegpt token file");
  write_bytes(path, "FGT");
  EXPECT_FG_ERROR(TokenFile{path}, path + ": not a fusegpt token file");
  write_bytes(path, "");
  EXPECT_FG_ERROR(TokenFile{path}, path + ": not a fusegpt token file");
}

TEST(TokenFile, WrongVersion) {
  TempDir dir;
  std::string path = valid_file(dir, 100);
  std::string bytes = read_bytes(path);
  uint32_t version = 2;
  std::memcpy(&bytes[8], &version, 4);
  write_bytes(path, bytes);
  EXPECT_FG_ERROR(TokenFile{path}, path + ": unsupported format version 2");
}

TEST(TokenFile, BadHeaderFields) {
  TempDir dir;
  std::string path = valid_file(dir, 100);
  const std::string good = read_bytes(path);
  std::string bytes = good;
  uint32_t kind = 7;
  std::memcpy(&bytes[12], &kind, 4);
  write_bytes(path, bytes);
  EXPECT_FG_ERROR(TokenFile{path}, path + ": unknown tokenizer kind 7");
  bytes = good;
  uint64_t vocab = 300;
  std::memcpy(&bytes[16], &vocab, 8);
  write_bytes(path, bytes);
  EXPECT_FG_ERROR(TokenFile{path}, "header says vocab size 300");
  write_bytes(path, good.substr(0, 20));
  EXPECT_FG_ERROR(TokenFile{path}, path + ": truncated header: the file is 20 bytes");
}

TEST(TokenFile, Truncated) {
  TempDir dir;
  std::string path = valid_file(dir, 1000);
  std::string bytes = read_bytes(path);
  write_bytes(path, bytes.substr(0, bytes.size() - 4));
  EXPECT_FG_ERROR(TokenFile{path},
                  path + ": truncated: header says 1000 tokens but the file holds 998");
  write_bytes(path, bytes + "xy");
  EXPECT_FG_ERROR(TokenFile{path}, path + ": 2 unexpected bytes after the 1000 tokens");
}

TEST(TokenFile, IdOutsideVocab) {
  TempDir dir;
  std::string text = "abcabc";
  write_bytes(dir.file("in.txt"), text);
  std::string path = dir.file("out.bin");
  prepare_token_file(dir.file("in.txt"), path, "char");
  std::string bytes = read_bytes(path);
  uint16_t bad = 3;  // vocab is {a, b, c}
  std::memcpy(&bytes[bytes.size() - 2 * 2], &bad, 2);
  write_bytes(path, bytes);
  EXPECT_FG_ERROR(TokenFile{path}, path + ": token 4 is 3 but the vocab size is 3");
}

TEST(TokenFile, EmptyTextFails) {
  TempDir dir;
  write_bytes(dir.file("empty.txt"), "");
  EXPECT_FG_ERROR(prepare_token_file(dir.file("empty.txt"), dir.file("out.bin"), "byte"),
                  dir.file("empty.txt") + ": the text file is empty");
  EXPECT_FALSE(fs::exists(dir.file("out.bin")));
}

TEST(TokenFile, FailedPrepareLeavesOutputUntouched) {
  TempDir dir;
  std::string out = valid_file(dir, 50);
  const std::string before = read_bytes(out);
  write_bytes(dir.file("empty.txt"), "");
  write_bytes(dir.file("in.txt"), "hello");
  EXPECT_FG_ERROR(prepare_token_file(dir.file("empty.txt"), out, "char"), "empty");
  EXPECT_FG_ERROR(prepare_token_file(dir.file("missing.txt"), out, "byte"), "cannot open");
  EXPECT_FG_ERROR(prepare_token_file(dir.file("in.txt"), out, "bpe"), "unknown tokenizer 'bpe'");
  EXPECT_EQ(read_bytes(out), before);
  TokenFile file(out);
  EXPECT_EQ(file.size(), 50);
}

TEST(TokenFile, WriteRejectsBadIds) {
  TempDir dir;
  Tokenizer tok = Tokenizer::char_level_from_text("ab");
  EXPECT_FG_ERROR(write_token_file(dir.file("t.bin"), {0, 1, 2}, tok),
                  "token 2 is 2, outside the vocab [0, 2)");
  EXPECT_FG_ERROR(write_token_file(dir.file("t.bin"), {}, tok), "no tokens");
  EXPECT_FALSE(fs::exists(dir.file("t.bin")));
}

TEST(TokenFile, FailedRenameLeavesNoTempFile) {
  TempDir dir;
  // The output path is a directory, so the final rename fails after the write.
  fs::create_directories(dir.file("out.bin"));
  EXPECT_FG_ERROR(write_token_file(dir.file("out.bin"), {1, 2}, Tokenizer::byte_level()),
                  "cannot rename the temp file into place");
  EXPECT_TRUE(fs::is_directory(dir.file("out.bin")));
  int entries = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(dir.file(""))) ++entries;
  EXPECT_EQ(entries, 1);
  EXPECT_FG_ERROR(
      write_token_file(dir.file("no_such_dir/out.bin"), {1, 2}, Tokenizer::byte_level()),
      "cannot create");
}
