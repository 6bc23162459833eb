// fgrun: the torchrun environment, rank-prefixed output, and a failing rank's
// exit code stopping the others.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

namespace {

const std::string kFgrun = std::string(FG_BINARY_DIR) + "/bin/fgrun";

struct Ran {
  int code;
  std::string output;  // stdout and stderr
  double seconds;
};

Ran run(const std::string& args) {
  auto t0 = std::chrono::steady_clock::now();
  FILE* p = ::popen((kFgrun + " " + args + " 2>&1").c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

TEST(Fgrun, SetsTheTorchrunEnvironmentAndPrefixesLines) {
  if (!std::filesystem::exists(kFgrun)) GTEST_SKIP() << kFgrun << " is not built";
  Ran r =
      run("-n 3 --master-port 29999 -- sh -c 'echo \"$RANK/$WORLD_SIZE local $LOCAL_RANK "
          "$MASTER_ADDR:$MASTER_PORT\"; echo to-stderr >&2'");
  EXPECT_EQ(r.code, 0) << r.output;
  for (int rank = 0; rank < 3; ++rank) {
    std::string rs = std::to_string(rank);
    EXPECT_NE(r.output.find("[rank " + rs + "] " + rs + "/3 local " + rs + " 127.0.0.1:29999\n"),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("[rank " + rs + "] to-stderr\n"), std::string::npos) << r.output;
  }
}

TEST(Fgrun, AFailingRankStopsTheOthersAndSetsTheExitCode) {
  if (!std::filesystem::exists(kFgrun)) GTEST_SKIP() << kFgrun << " is not built";
  // Rank 1 fails at once; the others would run for a minute.
  Ran r = run("-n 3 -- sh -c 'if [ \"$RANK\" = 1 ]; then echo failing; exit 7; fi; sleep 60'");
  EXPECT_EQ(r.code, 7) << r.output;
  EXPECT_LT(r.seconds, 10) << r.output;
  EXPECT_NE(r.output.find("[rank 1] failing"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("fgrun: rank 1 exited with code 7"), std::string::npos) << r.output;

  r = run("-n 2 -- /no/such/program");
  EXPECT_EQ(r.code, 127) << r.output;
  EXPECT_NE(r.output.find("cannot run /no/such/program"), std::string::npos) << r.output;
}

}  // namespace
