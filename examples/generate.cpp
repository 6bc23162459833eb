// generate: samples text from a checkpoint. No KV cache: each new token runs the
// model over the last max_seq_len tokens, which is plenty for small models.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "trainer/loop.h"

int main(int argc, char** argv) {
  CLI::App app{"fusegpt generate: sample from a trained checkpoint"};
  std::string checkpoint, prompt = "\n", device = "auto";
  int64_t tokens = 200, top_k = 0;
  double temperature = 1.0;
  uint64_t seed = 0;
  app.add_option("checkpoint", checkpoint, "checkpoint written by train_gpt --save")
      ->required()->check(CLI::ExistingFile);
  app.add_option("--prompt", prompt, "text to continue (default: a newline)");
  app.add_option("--tokens", tokens, "tokens to generate")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--temperature", temperature, "softmax temperature (0: greedy)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", top_k, "sample among the k most likely tokens (0: all)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--seed", seed, "sampling seed")->capture_default_str();
  app.add_option("--device", device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    fg::Device dev = device == "auto" ? (fg::cuda_available() ? fg::Device::cuda(0) : fg::Device::cpu())
                                      : fg::parse_device(device);
    fg::trainer::LoadedModel lm = fg::trainer::load_model(checkpoint, dev);
    const int64_t V = lm.model.config().vocab_size, T = lm.model.config().max_seq_len;
    std::vector<int32_t> ids = lm.tokenizer.encode(prompt);
    FG_CHECK(!ids.empty(), "--prompt must not be empty");
    fg::Generator gen(seed);
    std::fputs(prompt.c_str(), stdout);
    for (int64_t n = 0; n < tokens; ++n) {
      int64_t start = std::max<int64_t>(0, static_cast<int64_t>(ids.size()) - T);
      std::vector<int32_t> window(ids.begin() + start, ids.end());
      int64_t len = static_cast<int64_t>(window.size());
      fg::Tensor logits = lm.model.logits(fg::Tensor::from_ints(window, {1, len}));
      std::vector<double> row = logits.slice(1, len - 1, len).to_vector();  // (V)
      int32_t next = 0;
      if (temperature == 0) {
        next = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
      } else {
        std::vector<int32_t> order(V);
        for (int32_t i = 0; i < V; ++i) order[i] = i;
        std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
        int64_t k = top_k > 0 ? std::min(top_k, V) : V;
        std::vector<double> p(k);
        double total = 0;
        for (int64_t i = 0; i < k; ++i) total += p[i] = std::exp((row[order[i]] - row[order[0]]) / temperature);
        double u = fg::philox_uniform(gen.seed(), gen.next_offset(), 0) * total, acc = 0;
        next = order[k - 1];
        for (int64_t i = 0; i < k; ++i) {
          acc += p[i];
          if (u <= acc) {
            next = order[i];
            break;
          }
        }
      }
      ids.push_back(next);
      std::fputs(lm.tokenizer.decode({next}).c_str(), stdout);
      std::fflush(stdout);
    }
    std::fputs("\n", stdout);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "generate: error: " << e.what() << "\n";
    return 1;
  }
}
