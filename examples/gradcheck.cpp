// gradcheck: checks backward passes against central finite differences in f64.
//   gradcheck --ops                                   every op, one table
//   gradcheck --model                                 every parameter of a tiny GPT
//   gradcheck --checkpoint CK --tokens FILE --dump-grads OUT.h5 [--device D]
//                                                     the gradients of one batch, to HDF5
// Exit status is non-zero when any check fails.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "autograd/op_checks.h"
#include "trainer/checkpoint.h"
#include "trainer/loop.h"
#include "trainer/model.h"

namespace {

using fg::ag::GradCheckResult;

void print_header() {
  std::printf("%-30s %-46s %12s %12s  %s\n", "check", "shapes", "max abs err", "max rel err",
              "result");
}

bool print_row(const std::string& name, const std::string& shapes, const GradCheckResult& r) {
  std::printf("%-30s %-46s %12.3e %12.3e  %s\n", name.c_str(), shapes.c_str(), r.max_abs_error,
              r.max_rel_error, r.passed ? "PASS" : "FAIL");
  if (!r.passed) std::printf("    worst: %s\n", r.worst.c_str());
  return r.passed;
}

int summary(int total, int failed) {
  std::printf("%d checks, %d passed, %d failed (central differences, eps 1e-6, atol 1e-5, "
              "rtol 1e-3, f64)\n", total, total - failed, failed);
  return failed == 0 && total > 0 ? 0 : 1;
}

int run_op_checks(const std::string& filter) {
  print_header();
  int failed = 0, total = 0;
  for (const fg::ag::OpCheck& c : fg::ag::all_op_checks()) {
    if (!filter.empty() && c.op.find(filter) == std::string::npos) continue;
    ++total;
    failed += print_row(c.op, c.shapes, c.run()) ? 0 : 1;
  }
  return summary(total, failed);
}

// A tiny GPT with every feature on: GQA, qkv bias, partial rotary, odd sizes.
int run_model_check() {
  fg::trainer::GPTConfig cfg;
  cfg.vocab_size = 13;
  cfg.n_layer = 2;
  cfg.n_head = 3;
  cfg.n_kv_head = 1;
  cfg.d_model = 18;  // head_dim 6
  cfg.rotary_dim = 4;
  cfg.d_ff = 14;
  cfg.max_seq_len = 9;
  cfg.qkv_bias = true;
  fg::trainer::GPT model(cfg, 7, fg::Device::cpu(), fg::DType::F64);
  fg::Generator gen(3);
  // Larger weights than the 0.02 init so every path carries a visible gradient.
  std::vector<fg::ag::Variable> params;
  for (size_t i = 0; i < model.specs().size(); ++i) {
    const auto& s = model.specs()[i];
    fg::Tensor t = s.init == fg::trainer::ParamSpec::Init::Ones
                       ? fg::Tensor::uniform(s.shape, gen, 0.5, 1.5, fg::DType::F64)
                       : fg::Tensor::uniform(s.shape, gen, -0.5, 0.5, fg::DType::F64);
    params.emplace_back(t, false);
  }
  std::vector<int32_t> ids;
  for (int i = 0; i < 2 * 8; ++i) ids.push_back(static_cast<int32_t>((i * 7 + 3) % 13));
  std::vector<int32_t> tg(ids.begin() + 1, ids.end());
  tg.push_back(-1);  // an ignored target
  fg::Tensor idx = fg::Tensor::from_ints(ids, {2, 8}), targets = fg::Tensor::from_ints(tg, {2, 8});

  std::printf("tiny GPT: V 13, 2 layers, 3 heads / 1 kv head, d_model 18, rotary 4 of 6, "
              "d_ff 14, qkv bias, B 2, T 8\n");
  print_header();
  int failed = 0, total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<fg::ag::Variable> inputs;
    for (size_t j = 0; j < params.size(); ++j) inputs.emplace_back(params[j].data(), j == i);
    GradCheckResult r = fg::ag::gradcheck(
        [&](const std::vector<fg::ag::Variable>& p) {
          return std::vector<fg::ag::Variable>{
              model.loss_with(p, idx, targets, fg::trainer::Recompute::None)};
        },
        inputs);
    ++total;
    failed += print_row(model.specs()[i].name, fg::shape_str(model.specs()[i].shape), r) ? 0 : 1;
  }
  return summary(total, failed);
}

// DESIGN.md "Token batch file": one sequence per line, T+1 ids, all lines equal.
std::vector<std::vector<int32_t>> read_token_batch(const std::string& path, int64_t vocab) {
  std::ifstream in(path);
  FG_CHECK(in.good(), path, ": cannot open for reading");
  std::vector<std::vector<int32_t>> rows;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    std::istringstream ls(line);
    std::vector<int32_t> row;
    std::string word;
    while (ls >> word) {
      size_t used = 0;
      long long id = -1;
      try {
        id = std::stoll(word, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      FG_CHECK(used == word.size(), path, ":", lineno, ": '", word, "' is not a token id");
      FG_CHECK(id >= 0 && id < vocab, path, ":", lineno, ": token id ", id, " is outside [0, ",
               vocab, ")");
      row.push_back(static_cast<int32_t>(id));
    }
    if (row.empty()) continue;
    FG_CHECK(row.size() >= 2, path, ":", lineno, ": a sequence needs at least 2 ids");
    FG_CHECK(rows.empty() || row.size() == rows[0].size(), path, ":", lineno, ": ", row.size(),
             " ids but the first line has ", rows[0].size());
    rows.push_back(std::move(row));
  }
  FG_CHECK(!rows.empty(), path, ": no sequences");
  return rows;
}

int dump_grads(const std::string& checkpoint, const std::string& tokens, const std::string& out,
               const std::string& device) {
  fg::Device dev = fg::parse_device(device);
  fg::trainer::LoadedModel lm = fg::trainer::load_model(checkpoint, dev);
  auto rows = read_token_batch(tokens, lm.model.config().vocab_size);
  const int64_t B = static_cast<int64_t>(rows.size()), T = static_cast<int64_t>(rows[0].size()) - 1;
  FG_CHECK(T <= lm.model.config().max_seq_len, tokens, ": sequences of ", T,
           " inputs exceed max_seq_len ", lm.model.config().max_seq_len);
  std::vector<int32_t> in, tg;
  for (const auto& r : rows) {
    in.insert(in.end(), r.begin(), r.end() - 1);
    tg.insert(tg.end(), r.begin() + 1, r.end());
  }
  fg::ag::Variable loss =
      lm.model.loss(fg::Tensor::from_ints(in, {B, T}), fg::Tensor::from_ints(tg, {B, T}));
  loss.backward();
  fg::trainer::NamedTensors grads;
  for (size_t i = 0; i < lm.model.specs().size(); ++i)
    grads.emplace_back(lm.model.specs()[i].name,
                       lm.model.params()[i].grad().to(fg::Device::cpu(), fg::DType::F32));
  double value = loss.data().item();
  fg::trainer::save_grad_dump(out, value, grads);
  std::printf("loss %.9g over %lld x %lld tokens; %zu gradients written to %s\n", value,
              static_cast<long long>(B), static_cast<long long>(T), grads.size(), out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fusegpt gradcheck: backward passes against central finite differences in f64"};
  bool ops = false, model = false;
  std::string filter, checkpoint, tokens, dump, device = "cpu";
  app.add_flag("--ops", ops, "check every op's backward and print a table");
  app.add_flag("--model", model, "check every parameter gradient of a tiny GPT");
  app.add_option("--filter", filter, "with --ops: only ops whose name contains this text");
  app.add_option("--checkpoint", checkpoint, "checkpoint to take the weights from")
      ->check(CLI::ExistingFile);
  app.add_option("--tokens", tokens, "token batch file (one sequence of T+1 ids per line)")
      ->check(CLI::ExistingFile);
  app.add_option("--dump-grads", dump, "write the gradients of the batch's mean loss here (HDF5)");
  app.add_option("--device", device, "device for --checkpoint: cpu, cuda, cuda:N")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    int rc = 0;
    if (ops) rc |= run_op_checks(filter);
    if (model) rc |= run_model_check();
    if (!checkpoint.empty() || !tokens.empty() || !dump.empty()) {
      FG_CHECK(!checkpoint.empty() && !tokens.empty() && !dump.empty(),
               "--checkpoint, --tokens and --dump-grads go together");
      rc |= dump_grads(checkpoint, tokens, dump, device);
    } else if (!ops && !model) {
      std::cerr << "gradcheck: nothing to do; pass --ops, --model or --checkpoint (see --help)\n";
      return 2;
    }
    return rc;
  } catch (const std::exception& e) {
    std::cerr << "gradcheck: error: " << e.what() << "\n";
    return 1;
  }
}
