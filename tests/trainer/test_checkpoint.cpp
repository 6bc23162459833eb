// Checkpoints and gradient dumps: bit-exact roundtrips, atomic writes (also under
// SIGKILL), one-line errors for damaged or foreign files, and the schema checker script.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/hdf5.h"

namespace fs = std::filesystem;
using fg::DType;
using fg::Shape;
using fg::Tensor;
using fg::trainer::CheckpointData;
using fg::trainer::GPTConfig;
using fg::trainer::NamedTensors;

namespace {

// Parameter names and shapes exactly as DESIGN.md lists them; independent of
// trainer/model so the two can be checked against each other and the script.
std::vector<std::pair<std::string, Shape>> design_params(const GPTConfig& c) {
  const int64_t V = c.vocab_size, D = c.d_model, F = c.ff_dim();
  std::vector<std::pair<std::string, Shape>> p = {{"tok_embeddings.weight", {V, D}}};
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string l = "layers." + std::to_string(i) + ".";
    p.push_back({l + "attn_norm.weight", {D}});
    p.push_back({l + "attn.wqkv.weight", {c.qkv_dim(), D}});
    if (c.qkv_bias) p.push_back({l + "attn.wqkv.bias", {c.qkv_dim()}});
    p.push_back({l + "attn.wo.weight", {D, D}});
    p.push_back({l + "mlp_norm.weight", {D}});
    p.push_back({l + "mlp.w_gate_up.weight", {2 * F, D}});
    p.push_back({l + "mlp.w_down.weight", {D, F}});
  }
  p.push_back({"norm.weight", {D}});
  if (!c.tie_embeddings) p.push_back({"lm_head.weight", {V, D}});
  return p;
}

NamedTensors random_tensors(const std::vector<std::pair<std::string, Shape>>& table,
                            uint64_t seed) {
  fg::Generator gen(seed);
  NamedTensors out;
  for (const auto& [name, shape] : table) out.emplace_back(name, Tensor::randn(shape, gen));
  return out;
}

CheckpointData make_checkpoint(const GPTConfig& config, uint64_t seed = 1) {
  CheckpointData ck;
  ck.config = config;
  ck.step = 1234;
  ck.tokens_seen = int64_t{1} << 40;
  auto table = design_params(config);
  ck.model = random_tensors(table, seed);
  ck.exp_avg = random_tensors(table, seed + 1);
  ck.exp_avg_sq = random_tensors(table, seed + 2);
  ck.optimizer = {3e-4, 0.9, 0.95, 1e-8, 0.1, 1234};
  ck.trainer_ints = {{"seed", 42},
                     {"data_step", 1234},
                     {"rng_offset", std::numeric_limits<int64_t>::min()},
                     {"rng_state", std::numeric_limits<int64_t>::max()}};
  ck.trainer_floats = {{"best_val_loss", 1.0 / 3.0}, {"tiny", 5e-324}};
  ck.trainer_strings = {{"data", "data/tiny shakespeare.txt"}, {"note", "caf\xc3\xa9"}};
  ck.tokenizer_kind = "char";
  for (int b = 255; b >= 0; b -= 5) ck.tokenizer_vocab.push_back(static_cast<uint8_t>(b));
  return ck;
}

GPTConfig tiny_config() {
  GPTConfig c;
  c.vocab_size = 61;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.d_model = 32;
  c.d_ff = 72;
  c.max_seq_len = 48;
  c.rope_theta = 500000.5;
  c.rotary_dim = 6;
  c.norm_eps = 1e-6;
  c.qkv_bias = true;
  c.tie_embeddings = true;
  return c;
}

::testing::AssertionResult same_bits(const NamedTensors& a, const NamedTensors& b) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << a.size() << " tensors vs " << b.size();
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].first != b[i].first)
      return ::testing::AssertionFailure() << "name " << a[i].first << " vs " << b[i].first;
    Tensor x = a[i].second.to(DType::F32), y = b[i].second.to(DType::F32);
    if (x.shape() != y.shape())
      return ::testing::AssertionFailure()
             << a[i].first << ": " << x.shape_str() << " vs " << y.shape_str();
    if (x.nbytes() > 0 && std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) != 0)
      return ::testing::AssertionFailure() << a[i].first << ": values differ";
  }
  return ::testing::AssertionSuccess();
}

void expect_same_checkpoint(const CheckpointData& a, const CheckpointData& b) {
  a.config.visit_fields([&](const char* name, const auto& va) {
    b.config.visit_fields([&](const char* name_b, const auto& vb) {
      if constexpr (std::is_same_v<decltype(va), decltype(vb)>)
        if (std::string(name) == name_b) EXPECT_EQ(va, vb) << name;
    });
  });
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.tokens_seen, b.tokens_seen);
  EXPECT_TRUE(same_bits(a.model, b.model));
  EXPECT_TRUE(same_bits(a.exp_avg, b.exp_avg));
  EXPECT_TRUE(same_bits(a.exp_avg_sq, b.exp_avg_sq));
  EXPECT_EQ(a.optimizer.lr, b.optimizer.lr);
  EXPECT_EQ(a.optimizer.beta1, b.optimizer.beta1);
  EXPECT_EQ(a.optimizer.beta2, b.optimizer.beta2);
  EXPECT_EQ(a.optimizer.eps, b.optimizer.eps);
  EXPECT_EQ(a.optimizer.weight_decay, b.optimizer.weight_decay);
  EXPECT_EQ(a.optimizer.step, b.optimizer.step);
  EXPECT_EQ(a.trainer_ints, b.trainer_ints);
  EXPECT_EQ(a.trainer_floats, b.trainer_floats);
  EXPECT_EQ(a.trainer_strings, b.trainer_strings);
  EXPECT_EQ(a.tokenizer_kind, b.tokenizer_kind);
  EXPECT_EQ(a.tokenizer_vocab, b.tokenizer_vocab);
}

std::vector<std::string> dir_entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Opens a saved file read-write to damage its schema with the raw HDF5 API.
struct RawEdit {
  explicit RawEdit(const std::string& path)
      : file(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)) {
    EXPECT_TRUE(file.valid());
  }
  fg::trainer::H5File file;
};

class Checkpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ =
        fs::temp_directory_path() / ("fg_ckpt_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

}  // namespace

TEST_F(Checkpoint, RoundTripsEveryFieldBitExact) {
  CheckpointData ck = make_checkpoint(tiny_config());
  // Values a text format or a float64 detour would damage.
  float* w = ck.model[0].second.data<float>();
  w[0] = -0.0f;
  w[1] = std::numeric_limits<float>::denorm_min();
  w[2] = std::numeric_limits<float>::infinity();
  w[3] = std::numeric_limits<float>::quiet_NaN();
  w[4] = std::nextafter(1.0f, 2.0f);
  const std::string p = path("ck.h5");
  fg::trainer::save_checkpoint(p, ck);
  CheckpointData back = fg::trainer::load_checkpoint(p);
  expect_same_checkpoint(ck, back);
  // Order is the saved (model) order, not name order: layers.10 after layers.9.
  EXPECT_EQ(back.model.front().first, "tok_embeddings.weight");
  EXPECT_EQ(back.model.back().first, "norm.weight");
  EXPECT_EQ(back.model[0].second.dtype(), DType::F32);
}

TEST_F(Checkpoint, KeepsModelOrderWithManyLayersAndByteTokenizer) {
  GPTConfig c;
  c.n_layer = 12;
  c.d_model = 16;
  c.n_head = 2;
  c.vocab_size = 256;
  CheckpointData ck = make_checkpoint(c);
  ck.tokenizer_kind = "byte";
  ck.tokenizer_vocab.clear();
  ck.trainer_ints.clear();
  ck.trainer_floats.clear();
  ck.trainer_strings.clear();
  fg::trainer::save_checkpoint(path("ck.h5"), ck);
  CheckpointData back = fg::trainer::load_checkpoint(path("ck.h5"));
  expect_same_checkpoint(ck, back);
  std::vector<std::pair<std::string, Shape>> table = design_params(c);
  ASSERT_EQ(back.model.size(), table.size());
  for (size_t i = 0; i < table.size(); ++i) EXPECT_EQ(back.model[i].first, table[i].first);
  fg::trainer::check_model_tensors(path("ck.h5"), back.model, table);
}

TEST_F(Checkpoint, StoresAnyFloatDtypeAsFloat32) {
  GPTConfig c = tiny_config();
  CheckpointData ck = make_checkpoint(c);
  Tensor f64 = Tensor::from_vector({1.0 / 3.0, -2.5, 1e300}, {3}, DType::F64);
  Tensor bf16 = Tensor::from_vector({1.0, -0.5, 3.0, 7.0}, {2, 2}, DType::BF16);
  Tensor strided = Tensor::arange(12).view({3, 4}).transpose(0, 1);  // (4, 3), not contiguous
  NamedTensors grads = {{"a", f64}, {"b", bf16}, {"c", strided}, {"scalar", Tensor::full({}, 2.5)}};
  fg::trainer::save_grad_dump(path("g.h5"), 0.125, grads);
  NamedTensors back;
  EXPECT_EQ(fg::trainer::load_grad_dump(path("g.h5"), &back), 0.125);
  ASSERT_EQ(back.size(), 4u);
  EXPECT_EQ(back[0].second.to_vector(),
            (std::vector<double>{double(1.0f / 3.0f), -2.5, double(INFINITY)}));
  EXPECT_EQ(back[1].second.shape(), (Shape{2, 2}));
  EXPECT_EQ(back[1].second.to_vector(), (std::vector<double>{1.0, -0.5, 3.0, 7.0}));
  EXPECT_EQ(back[2].second.shape(), (Shape{4, 3}));
  EXPECT_EQ(back[2].second.to_vector(), strided.to_vector());
  EXPECT_EQ(back[3].second.shape(), Shape{});
  EXPECT_EQ(back[3].second.item(), 2.5);
  for (const auto& [name, t] : back) EXPECT_EQ(t.dtype(), DType::F32) << name;
}

TEST_F(Checkpoint, GradDumpRoundTrips) {
  NamedTensors grads = random_tensors(design_params(tiny_config()), 9);
  fg::trainer::save_grad_dump(path("g.h5"), 4.0 / 3.0, grads);
  NamedTensors back;
  EXPECT_EQ(fg::trainer::load_grad_dump(path("g.h5"), &back), 4.0 / 3.0);
  EXPECT_TRUE(same_bits(grads, back));
  EXPECT_EQ(dir_entries(dir_), std::vector<std::string>{"g.h5"});
  EXPECT_FG_ERROR(fg::trainer::load_grad_dump(path("none.h5"), &back), "none.h5: no such file");
}

TEST_F(Checkpoint, AtomicWriteLeavesNoTempBehind) {
  const std::string p = path("ck.h5");
  CheckpointData first = make_checkpoint(tiny_config(), 1);
  fg::trainer::save_checkpoint(p, first);
  CheckpointData second = make_checkpoint(tiny_config(), 7);
  second.step = 99;
  fg::trainer::save_checkpoint(p, second);  // over an existing file
  EXPECT_EQ(dir_entries(dir_), std::vector<std::string>{"ck.h5"});
  expect_same_checkpoint(second, fg::trainer::load_checkpoint(p));

  // A save that fails halfway (an integer tensor is refused while writing /model)
  // removes its temp file and leaves the previous checkpoint as it was.
  CheckpointData bad = make_checkpoint(tiny_config(), 3);
  bad.model.back().second = Tensor::zeros(bad.model.back().second.shape(), DType::I32);
  EXPECT_FG_ERROR(fg::trainer::save_checkpoint(p, bad), "checkpoints hold float tensors");
  EXPECT_EQ(dir_entries(dir_), std::vector<std::string>{"ck.h5"});
  expect_same_checkpoint(second, fg::trainer::load_checkpoint(p));

  // A stale temp file from a crashed run is overwritten, then renamed away.
  std::ofstream(p + ".tmp") << "half a checkpoint";
  fg::trainer::save_checkpoint(p, first);
  EXPECT_EQ(dir_entries(dir_), std::vector<std::string>{"ck.h5"});
  expect_same_checkpoint(first, fg::trainer::load_checkpoint(p));

  // A missing directory is an error, not a crash, and creates nothing.
  EXPECT_FG_ERROR(fg::trainer::save_checkpoint(path("no/such/dir/ck.h5"), first),
                  "directory " + path("no/such/dir") + " does not exist");
}

TEST_F(Checkpoint, SaveRefusesInconsistentData) {
  CheckpointData ck = make_checkpoint(tiny_config());
  const std::string p = path("ck.h5");
  CheckpointData c1 = ck;
  c1.exp_avg.pop_back();
  EXPECT_FG_ERROR(fg::trainer::save_checkpoint(p, c1), "exp_avg does not match the model tensors");
  CheckpointData c2 = ck;
  c2.model.push_back(c2.model.front());
  EXPECT_FG_ERROR(fg::trainer::save_checkpoint(p, c2), "appears twice");
  CheckpointData c3 = ck;
  c3.model[0].first = "a/b";
  EXPECT_FG_ERROR(fg::trainer::save_checkpoint(p, c3), "is not a valid dataset name");
  CheckpointData c4 = ck;
  c4.tokenizer_kind = "bpe";
  EXPECT_FG_ERROR(fg::trainer::save_checkpoint(p, c4), "tokenizer kind 'bpe'");
  CheckpointData c5 = ck;
  c5.trainer_floats["seed"] = 1.0;
  EXPECT_FG_ERROR(fg::trainer::save_checkpoint(p, c5), "/trainer attribute 'seed'");
  CheckpointData c6 = ck;
  c6.config.n_head = 5;
  EXPECT_FG_ERROR(fg::trainer::save_checkpoint(p, c6), "invalid config");
  EXPECT_TRUE(dir_entries(dir_).empty());
}

TEST_F(Checkpoint, LoadErrorsNameTheFile) {
  const std::string p = path("ck.h5");
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(p), p + ": no such file");
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(dir_.string()), "is a directory");

  std::ofstream(path("text.h5")) << "step,loss\n1,4.2\n2,3.9\n";
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(path("text.h5")), "text.h5: not an HDF5 file");
  std::ofstream{path("empty.h5")};
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(path("empty.h5")), "empty.h5: empty file");

  // An HDF5 file that is not ours.
  {
    fg::trainer::H5File f = fg::trainer::h5_create_file(path("other.h5"));
    fg::trainer::h5_write_attr_int(f.id(), "answer", 42, "other.h5");
  }
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(path("other.h5")),
                  "other.h5: not a fusegpt checkpoint");
}

TEST_F(Checkpoint, LoadErrorsOnDamagedFiles) {
  const std::string p = path("ck.h5");
  fg::trainer::save_checkpoint(p, make_checkpoint(tiny_config()));
  const auto size = fs::file_size(p);
  ASSERT_GT(size, 100000u);

  fs::copy_file(p, path("half.h5"));
  fs::resize_file(path("half.h5"), size / 2);
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(path("half.h5")), "half.h5: H5Fopen failed");
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(path("half.h5")), "truncated file");

  // Overwrite bytes at several places: metadata and raw data are both checksummed.
  for (double where : {0.1, 0.25, 0.5, 0.75, 0.97}) {
    const std::string q = path("bad.h5");
    fs::remove(q);
    fs::copy_file(p, q);
    {
      std::fstream f(q, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(where * static_cast<double>(size)));
      std::string junk(64, '\x5a');
      f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
    }
    try {
      fg::trainer::load_checkpoint(q);
      ADD_FAILURE() << "corruption at " << where << " of the file went unnoticed";
    } catch (const fg::Error& e) {
      std::string what = e.what();
      EXPECT_EQ(what.rfind(q + ": ", 0), 0u) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
}

TEST_F(Checkpoint, LoadErrorsOnSchemaViolations) {
  const std::string p = path("ck.h5");
  const CheckpointData ck = make_checkpoint(tiny_config());
  auto fresh = [&] {
    fs::remove(p);
    fg::trainer::save_checkpoint(p, ck);
  };
  fresh();
  {
    RawEdit e(p);
    H5Adelete(e.file.id(), "format");
    fg::trainer::h5_write_attr_string(e.file.id(), "format", "pytorch", p);
  }
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(p), "format is 'pytorch', expected 'fusegpt'");

  fresh();
  {
    RawEdit e(p);
    H5Adelete(e.file.id(), "format_version");
    fg::trainer::h5_write_attr_int(e.file.id(), "format_version", 2, p);
  }
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(p), "format_version 2 is not supported");

  fresh();
  {
    RawEdit e(p);
    H5Adelete(e.file.id(), "format_version");
    fg::trainer::h5_write_attr_string(e.file.id(), "format_version", "1", p);
  }
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(p), "'format_version' of / is a string");

  fresh();
  {
    RawEdit e(p);
    H5Ldelete(e.file.id(), "model", H5P_DEFAULT);
  }
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(p), "ck.h5: missing group /model");

  fresh();
  {
    RawEdit e(p);
    H5Adelete(e.file.id(), "tokens_seen");
  }
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(p), "/ has no attribute 'tokens_seen'");

  fresh();
  {
    RawEdit e(p);
    fg::trainer::H5Group g(H5Gopen2(e.file.id(), "config", H5P_DEFAULT));
    H5Adelete(g.id(), "n_head");
  }
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(p), "/config has no attribute 'n_head'");

  fresh();
  {
    RawEdit e(p);
    fg::trainer::H5Group g(H5Gopen2(e.file.id(), "config", H5P_DEFAULT));
    fg::trainer::h5_write_attr_int(g.id(), "n_expert", 8, p);
  }
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(p), "/config has field 'n_expert'");

  fresh();
  {
    RawEdit e(p);
    fg::trainer::H5Group g(H5Gopen2(e.file.id(), "config", H5P_DEFAULT));
    H5Adelete(g.id(), "n_kv_head");
    fg::trainer::h5_write_attr_int(g.id(), "n_kv_head", 3, p);
  }
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(p), "invalid /config");

  fresh();
  {
    RawEdit e(p);
    H5Ldelete(e.file.id(), "optimizer/exp_avg_sq/norm.weight", H5P_DEFAULT);
  }
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(p),
                  "/optimizer/exp_avg_sq does not match the model tensors: norm.weight is missing");

  fresh();
  {
    RawEdit e(p);
    H5Ldelete(e.file.id(), "tokenizer/vocab", H5P_DEFAULT);
  }
  EXPECT_FG_ERROR(fg::trainer::load_checkpoint(p), "missing dataset /tokenizer/vocab");
}

TEST_F(Checkpoint, CheckModelTensorsNamesTheProblem) {
  GPTConfig c;
  auto table = design_params(c);
  NamedTensors got = random_tensors(table, 3);
  fg::trainer::check_model_tensors("ck.h5", got, table);  // matches

  GPTConfig wider = c;
  wider.d_model = 96;
  wider.n_head = 4;
  auto wider_table = design_params(wider);
  EXPECT_FG_ERROR(fg::trainer::check_model_tensors("ck.h5", got, wider_table),
                  "ck.h5: tok_embeddings.weight is (64, 64) but the model expects (64, 96)");
  std::vector<std::pair<std::string, Shape>> one_wrong = table;
  for (auto& [name, shape] : one_wrong)
    if (name == "layers.0.attn.wo.weight") shape = {96, 96};
  EXPECT_FG_ERROR(fg::trainer::check_model_tensors("ck.h5", got, one_wrong),
                  "ck.h5: layers.0.attn.wo.weight is (64, 64) but the model expects (96, 96)");

  NamedTensors missing(got.begin() + 1, got.end());
  EXPECT_FG_ERROR(fg::trainer::check_model_tensors("ck.h5", missing, table),
                  "ck.h5: tok_embeddings.weight is missing (the model expects (64, 64))");

  GPTConfig tied = c;
  tied.tie_embeddings = true;
  EXPECT_FG_ERROR(fg::trainer::check_model_tensors("ck.h5", got, design_params(tied)),
                  "ck.h5: lm_head.weight (64, 64) is not a parameter of the model");

  EXPECT_FG_ERROR(fg::trainer::check_model_tensors("ck.h5", {}, table), "; and ");
}

// The parent saves a ~200 MB checkpoint; a child rewrites the same path in a loop and
// is SIGKILLed at several points. The file must always load and equal a complete save.
TEST_F(Checkpoint, SurvivesKillDuringSave) {
  const std::string p = path("ck.h5");
  GPTConfig c;
  CheckpointData ck = make_checkpoint(c);
  // One 64 MB tensor, also standing in for both optimizer states: 192 MB per save.
  Tensor big = Tensor::empty({1024, 16384});
  float* d = big.data<float>();
  for (int64_t i = 0; i < big.numel(); ++i) d[i] = static_cast<float>(i % 9973) * 0.25f;
  ck.model.emplace_back("big", big);
  ck.exp_avg = ck.model;
  ck.exp_avg_sq = ck.model;
  ck.step = 0;
  fg::trainer::save_checkpoint(p, ck);

  int kills_mid_write = 0;
  for (int delay_ms : {20, 150, 500}) {
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      CheckpointData again = ck;
      try {
        for (int64_t i = 1;; ++i) {
          again.step = i;
          fg::trainer::save_checkpoint(p, again);
        }
      } catch (...) {
        ::_exit(2);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    ASSERT_EQ(::kill(child, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child exited early";
    if (fs::exists(p + ".tmp")) ++kills_mid_write;

    CheckpointData back = fg::trainer::load_checkpoint(p);
    EXPECT_GE(back.step, 0);
    back.step = ck.step;
    expect_same_checkpoint(ck, back);
  }
  EXPECT_GT(kills_mid_write, 0) << "no kill landed during a write; the test proved nothing";
  fg::trainer::save_checkpoint(p, ck);  // the next save clears the stale temp file
  EXPECT_EQ(dir_entries(dir_), std::vector<std::string>{"ck.h5"});
}

// scripts/check_checkpoint.py accepts what save_checkpoint writes and rejects a
// checkpoint whose tensors do not follow /config. Needs Debian's python3-h5py.
TEST_F(Checkpoint, SchemaScriptChecksSavedFiles) {
  const std::string python = "/usr/bin/python3";
  if (std::system((python + " -c 'import h5py' >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << "no h5py for " << python;
  const std::string script = std::string(FG_SOURCE_DIR) + "/scripts/check_checkpoint.py";
  auto run = [&](const std::string& file) {
    std::string cmd = python + " " + script + " " + file + " > " + path("out.txt") + " 2>&1";
    int rc = std::system(cmd.c_str());
    std::ifstream in(path("out.txt"));
    std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return std::make_pair(rc, out);
  };

  GPTConfig gqa;  // defaults: d_ff from d_model, untied, no bias
  gqa.n_kv_head = 2;
  CheckpointData a = make_checkpoint(gqa);
  a.tokenizer_vocab = {'\n', ' ', 'a', 'b'};
  fg::trainer::save_checkpoint(path("a.h5"), a);
  auto [rc_a, out_a] = run(path("a.h5"));
  EXPECT_EQ(rc_a, 0) << out_a;

  CheckpointData b = make_checkpoint(tiny_config());  // tied, qkv_bias, partial rotary
  fg::trainer::save_checkpoint(path("b.h5"), b);
  auto [rc_b, out_b] = run(path("b.h5"));
  EXPECT_EQ(rc_b, 0) << out_b;

  CheckpointData bad = make_checkpoint(gqa);
  bad.model[1].second = Tensor::zeros({65});  // layers.0.attn_norm.weight is [D] = [64]
  bad.exp_avg[1].second = Tensor::zeros({65});
  bad.exp_avg_sq[1].second = Tensor::zeros({65});
  fg::trainer::save_checkpoint(path("bad.h5"), bad);
  auto [rc_bad, out_bad] = run(path("bad.h5"));
  EXPECT_NE(rc_bad, 0) << out_bad;
  EXPECT_NE(out_bad.find("layers.0.attn_norm.weight"), std::string::npos) << out_bad;

  CheckpointData tied_bad = make_checkpoint(tiny_config());
  tied_bad.model.emplace_back("lm_head.weight", Tensor::zeros({61, 32}));
  tied_bad.exp_avg.emplace_back("lm_head.weight", Tensor::zeros({61, 32}));
  tied_bad.exp_avg_sq.emplace_back("lm_head.weight", Tensor::zeros({61, 32}));
  fg::trainer::save_checkpoint(path("tied_bad.h5"), tied_bad);
  auto [rc_tb, out_tb] = run(path("tied_bad.h5"));
  EXPECT_NE(rc_tb, 0) << out_tb;
  EXPECT_NE(out_tb.find("lm_head.weight"), std::string::npos) << out_tb;
}
