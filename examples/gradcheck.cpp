// gradcheck: checks every backward pass against central finite differences in f64.
//   gradcheck --ops                 every op, one table
// Exit status is non-zero when any check fails.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "autograd/op_checks.h"

namespace {

int run_op_checks(const std::string& filter) {
  std::printf("%-18s %-58s %12s %12s  %s\n", "op", "shapes", "max abs err", "max rel err",
              "result");
  int failed = 0, total = 0;
  for (const fg::ag::OpCheck& c : fg::ag::all_op_checks()) {
    if (!filter.empty() && c.op.find(filter) == std::string::npos) continue;
    fg::ag::GradCheckResult r = c.run();
    ++total;
    failed += r.passed ? 0 : 1;
    std::printf("%-18s %-58s %12.3e %12.3e  %s\n", c.op.c_str(), c.shapes.c_str(), r.max_abs_error,
                r.max_rel_error, r.passed ? "PASS" : "FAIL");
    if (!r.passed) std::printf("    worst: %s\n", r.worst.c_str());
  }
  std::printf("%d checks, %d passed, %d failed (eps 1e-6, atol 1e-5, rtol 1e-3, f64)\n", total,
              total - failed, failed);
  return failed == 0 && total > 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fusegpt gradcheck: backward passes against central finite differences in f64"};
  bool ops = false;
  std::string filter;
  app.add_flag("--ops", ops, "check every op's backward and print a table");
  app.add_option("--filter", filter, "only the checks whose op name contains this text");
  CLI11_PARSE(app, argc, argv);
  try {
    if (ops) return run_op_checks(filter);
    std::cerr << "gradcheck: nothing to do; pass --ops (see --help)\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "gradcheck: " << e.what() << "\n";
    return 1;
  }
}
