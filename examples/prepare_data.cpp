// prepare_data: tokenizes a text file once into a token file (header + uint16
// ids, format in trainer/token_file.h) that train_gpt --data memory-maps.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "trainer/token_file.h"

int main(int argc, char** argv) {
  CLI::App app{"fusegpt prepare_data: turn a text file into a token file for train_gpt --data"};
  std::string input, output, tokenizer = "char";
  app.add_option("input", input, "text file")->required()->check(CLI::ExistingFile);
  app.add_option("output", output, "token file to write (replaced atomically)")->required();
  app.add_option("--tokenizer", tokenizer, "byte or char")
      ->check(CLI::IsMember({"byte", "char"}))->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    fg::trainer::prepare_token_file(input, output, tokenizer);
    fg::trainer::TokenFile file(output);
    std::printf("%s: %lld tokens, %s tokenizer, vocab %lld\n", output.c_str(),
                static_cast<long long>(file.size()), file.tokenizer().kind().c_str(),
                static_cast<long long>(file.vocab_size()));
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "prepare_data: error: " << e.what() << "\n";
    return 1;
  }
}
