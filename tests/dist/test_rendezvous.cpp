// Rendezvous: launcher variables (torchrun, mpirun, srun) and the TCP
// exchange of rank 0's bytes on loopback, including ranks that never come.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <thread>

#include "dist/rendezvous.h"
#include "test_util.h"

using namespace fg;
using namespace fg::dist;

namespace {

using Env = std::map<std::string, std::string>;

std::optional<ProcessGroup> from(const Env& env) {
  return process_group_from_env([&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

// A port nobody listens on right now (the kernel's pick for port 0).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(ProcessGroupFromEnv, ReadsEachLauncher) {
  EXPECT_FALSE(from({}).has_value());

  auto pg = from({{"RANK", "3"},
                  {"WORLD_SIZE", "8"},
                  {"LOCAL_RANK", "1"},
                  {"MASTER_ADDR", "node0"},
                  {"MASTER_PORT", "1234"}});
  ASSERT_TRUE(pg);
  EXPECT_EQ(pg->launcher, "torchrun");
  EXPECT_EQ(pg->rank, 3);
  EXPECT_EQ(pg->world_size, 8);
  EXPECT_EQ(pg->local_rank, 1);
  EXPECT_EQ(pg->master_addr, "node0");
  EXPECT_EQ(pg->master_port, 1234);

  pg = from({{"OMPI_COMM_WORLD_RANK", "1"},
             {"OMPI_COMM_WORLD_SIZE", "2"},
             {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
             {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  ASSERT_TRUE(pg);
  EXPECT_EQ(pg->launcher, "mpirun");
  EXPECT_EQ(pg->rank, 1);
  EXPECT_EQ(pg->local_rank, 1);
  EXPECT_EQ(pg->master_addr, "127.0.0.1");  // one node: loopback
  EXPECT_EQ(pg->master_port, 29500);

  pg = from({{"SLURM_PROCID", "5"},
             {"SLURM_NTASKS", "16"},
             {"SLURM_LOCALID", "1"},
             {"SLURM_NNODES", "4"},
             {"MASTER_ADDR", "10.0.0.7"}});
  ASSERT_TRUE(pg);
  EXPECT_EQ(pg->launcher, "srun");
  EXPECT_EQ(pg->rank, 5);
  EXPECT_EQ(pg->world_size, 16);
  EXPECT_EQ(pg->master_addr, "10.0.0.7");
}

TEST(ProcessGroupFromEnv, BadValuesAreClearErrors) {
  EXPECT_FG_ERROR(from({{"RANK", "0"}}), "WORLD_SIZE is not set but RANK is");
  EXPECT_FG_ERROR(from({{"RANK", "x"}, {"WORLD_SIZE", "2"}}),
                  "RANK='x' is not a non-negative integer");
  EXPECT_FG_ERROR(from({{"RANK", "2"}, {"WORLD_SIZE", "2"}}), "RANK=2 is not below WORLD_SIZE=2");
  EXPECT_FG_ERROR(from({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"SLURM_NNODES", "2"}}),
                  "MASTER_ADDR is not set; with srun across several nodes");
  EXPECT_FG_ERROR(
      from({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}),
      "MASTER_PORT=70000 is not a TCP port");
}

TEST(Rendezvous, RankZeroSharesItsBytesOverLoopback) {
  const int world = 4, port = free_port();
  const std::vector<uint8_t> secret = {1, 2, 3, 250, 0, 7};
  std::vector<std::vector<uint8_t>> got(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> threads;
  for (int r = world - 1; r >= 0; --r) {  // rank 0 last: the others must retry until it listens
    threads.emplace_back([&, r] {
      ProcessGroup pg{r, world, r, "127.0.0.1", port, "test"};
      try {
        got[r] = share_from_rank0(pg, r == 0 ? secret : std::vector<uint8_t>{}, 10);
      } catch (const Error& e) {
        errors[r] = e.what();
      }
    });
    if (r == world - 1) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(got[r], secret) << "rank " << r;
  }
}

TEST(Rendezvous, RankZeroNamesTheRanksThatNeverConnect) {
  const int port = free_port();
  std::string error1;
  std::thread one([&] {
    ProcessGroup pg{1, 3, 1, "127.0.0.1", port, "test"};
    try {
      share_from_rank0(pg, {}, 5);
    } catch (const Error& e) {
      error1 = e.what();
    }
  });
  auto t0 = std::chrono::steady_clock::now();
  ProcessGroup pg{0, 3, 0, "127.0.0.1", port, "test"};
  EXPECT_FG_ERROR(share_from_rank0(pg, {42}, 1.0), "rendezvous: rank 0 waited 1 s on port " +
                                                       std::to_string(port) +
                                                       " for rank 2 of 3 to connect");
  EXPECT_LT(seconds_since(t0), 2.0);
  one.join();
  EXPECT_EQ(error1, "");  // rank 1 was answered as soon as it came
}

TEST(Rendezvous, ARankGivesUpWhenRankZeroNeverListens) {
  ProcessGroup pg{2, 3, 0, "127.0.0.1", free_port(), "test"};
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FG_ERROR(share_from_rank0(pg, {}, 1.0),
                  "rendezvous: rank 2 could not reach rank 0 at 127.0.0.1:");
  EXPECT_LT(seconds_since(t0), 2.0);
}

TEST(Rendezvous, WorldSizesMustAgree) {
  const int port = free_port();
  std::thread one([&] {
    ProcessGroup pg{1, 4, 1, "127.0.0.1", port, "test"};
    try {
      share_from_rank0(pg, {}, 3);
    } catch (const Error&) {
    }
  });
  ProcessGroup pg{0, 2, 0, "127.0.0.1", port, "test"};
  EXPECT_FG_ERROR(share_from_rank0(pg, {1}, 3),
                  "rank 1 says the world has 4 ranks but rank 0 has WORLD_SIZE 2");
  one.join();
}

}  // namespace
