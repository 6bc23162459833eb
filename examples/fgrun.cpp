// fgrun: launches N local processes of one program with the environment
// torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT), prefixes every line they print with "[rank r] ", forwards
// SIGINT and SIGTERM, and stops them all when one fails; its exit status is
// the first failing rank's.
//
//   fgrun -n 4 -- train_gpt --device cuda --batch 64
//   fgrun -n 8 --nnodes 2 --node-rank 0 --master-addr node0 -- train_gpt ...   (on each node)
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

int g_signal_pipe[2] = {-1, -1};  // the handler's bytes wake the poll loop

void on_signal(int sig) {
  int saved = errno;
  unsigned char b = static_cast<unsigned char>(sig);
  (void)!::write(g_signal_pipe[1], &b, 1);
  errno = saved;
}

void write_all(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

// One stream (stdout or stderr) of one rank: its pipe and the unfinished line.
struct Output {
  int rank;
  int fd;      // read end; -1 at EOF
  int target;  // 1 or 2
  std::string pending;

  // Prints every complete line with its prefix; at EOF also the rest.
  void flush_lines(bool eof) {
    size_t start = 0, nl;
    while ((nl = pending.find('\n', start)) != std::string::npos) {
      write_all(target,
                "[rank " + std::to_string(rank) + "] " + pending.substr(start, nl + 1 - start));
      start = nl + 1;
    }
    pending.erase(0, start);
    if (eof && !pending.empty()) {
      write_all(target, "[rank " + std::to_string(rank) + "] " + pending + "\n");
      pending.clear();
    }
  }
};

struct Child {
  pid_t pid = -1;
  bool running = false;
  int status = 0;
};

// Exit code a shell would report for a wait status.
int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

std::string describe(int status) {
  if (WIFSIGNALED(status))
    return std::string("was killed by signal ") + strsignal(WTERMSIG(status));
  return "exited with code " + std::to_string(exit_code(status));
}

// Signals a rank's whole process group (each rank leads its own, so the
// terminal's Ctrl-C reaches fgrun alone and fgrun decides).
void signal_rank(const Child& c, int sig) {
  if (c.running) ::kill(-c.pid, sig);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fgrun: start N local ranks of a program (torchrun-style environment)"};
  int nproc = 1, nnodes = 1, node_rank = 0, port = 29500;
  double grace = 5;
  std::string addr = "127.0.0.1";
  std::vector<std::string> command;
  app.add_option("-n,--nproc-per-node", nproc, "processes to start on this node")
      ->required()
      ->check(CLI::PositiveNumber);
  app.add_option("--nnodes", nnodes, "nodes in the job (each runs fgrun)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--node-rank", node_rank, "this node's index in [0, nnodes)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--master-addr", addr, "rank 0's host (node-rank 0)")->capture_default_str();
  app.add_option("--master-port", port, "rank 0's rendezvous port")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  app.add_option("--grace", grace, "seconds between SIGTERM and SIGKILL when stopping ranks")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("command", command, "the program and its arguments, after --")->required();
  CLI11_PARSE(app, argc, argv);
  if (node_rank >= nnodes) {
    std::fprintf(stderr, "fgrun: error: --node-rank (%d) must be below --nnodes (%d)\n", node_rank,
                 nnodes);
    return 2;
  }

  if (::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    std::perror("fgrun: pipe");
    return 1;
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGINT, SIGTERM, SIGCHLD}) ::sigaction(sig, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  std::vector<Child> children(nproc);
  std::vector<Output> outputs;
  for (int local = 0; local < nproc; ++local) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
      std::perror("fgrun: pipe");
      return 1;
    }
    // Until the child has reset its handlers, a signal to it must not run
    // ours (it would write into our signal pipe): block them across the fork.
    sigset_t block, previous;
    sigemptyset(&block);
    for (int sig : {SIGINT, SIGTERM, SIGCHLD}) sigaddset(&block, sig);
    ::sigprocmask(SIG_BLOCK, &block, &previous);
    pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("fgrun: fork");
      return 1;
    }
    if (pid == 0) {
      ::setpgid(0, 0);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      for (int sig : {SIGINT, SIGTERM, SIGCHLD, SIGPIPE}) ::sigaction(sig, &dfl, nullptr);
      ::sigprocmask(SIG_SETMASK, &previous, nullptr);
      ::setenv("RANK", std::to_string(node_rank * nproc + local).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nnodes * nproc).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", addr.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      std::vector<char*> args;
      for (std::string& a : command) args.push_back(a.data());
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      std::fprintf(stderr, "fgrun: cannot run %s: %s\n", args[0], std::strerror(errno));
      ::_exit(127);
    }
    ::setpgid(pid, pid);  // also here, so a signal sent right after fork finds the group
    ::sigprocmask(SIG_SETMASK, &previous, nullptr);
    ::close(out[1]);
    ::close(err[1]);
    children[local] = {pid, true, 0};
    int rank = node_rank * nproc + local;
    outputs.push_back({rank, out[0], 1, ""});
    outputs.push_back({rank, err[0], 2, ""});
  }

  int running = nproc;
  int failed_rank = -1, failed_status = 0, interrupted = 0;
  Clock::time_point kill_at = Clock::time_point::max();
  Clock::time_point output_deadline = Clock::time_point::max();  // grandchildren may hold pipes
  auto stop_all = [&](int sig) {
    for (const Child& c : children) signal_rank(c, sig);
    kill_at = std::min(kill_at, Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                   std::chrono::duration<double>(grace)));
  };

  while (true) {
    bool open_outputs = false;
    for (const Output& o : outputs) open_outputs |= o.fd >= 0;
    if (running == 0 && (!open_outputs || Clock::now() > output_deadline)) break;

    std::vector<pollfd> fds{{g_signal_pipe[0], POLLIN, 0}};
    std::vector<Output*> polled;
    for (Output& o : outputs) {
      if (o.fd < 0) continue;
      fds.push_back({o.fd, POLLIN, 0});
      polled.push_back(&o);
    }
    constexpr int kPollMs = 200;  // also how often the SIGKILL deadline is checked
    if (::poll(fds.data(), fds.size(), kPollMs) < 0 && errno != EINTR) {
      std::perror("fgrun: poll");
      return 1;
    }

    unsigned char sig;
    while (::read(g_signal_pipe[0], &sig, 1) == 1) {
      if (sig == SIGCHLD) continue;
      if (interrupted) {
        for (const Child& c : children) signal_rank(c, SIGKILL);  // asked twice: no more waiting
      } else {
        interrupted = sig;
        std::fprintf(stderr, "fgrun: got %s; passing it to the ranks\n", strsignal(sig));
        stop_all(sig);
      }
    }

    char buf[1 << 16];
    for (size_t i = 0; i < polled.size(); ++i) {
      if (fds[i + 1].revents == 0) continue;
      Output& o = *polled[i];
      ssize_t n = ::read(o.fd, buf, sizeof buf);
      if (n > 0) {
        o.pending.append(buf, static_cast<size_t>(n));
        o.flush_lines(false);
      } else if (n == 0 || errno != EINTR) {
        o.flush_lines(true);
        ::close(o.fd);
        o.fd = -1;
      }
    }

    int status;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      for (int local = 0; local < nproc; ++local) {
        Child& c = children[local];
        if (c.pid != pid || !c.running) continue;
        c.running = false;
        c.status = status;
        --running;
        if (running == 0) output_deadline = Clock::now() + std::chrono::seconds(2);
        bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && failed_rank < 0) {
          failed_rank = node_rank * nproc + local;
          failed_status = status;
          if (!interrupted && running > 0) {
            std::fprintf(stderr, "fgrun: rank %d %s; stopping the other ranks\n", failed_rank,
                         describe(status).c_str());
            stop_all(SIGTERM);
          }
        }
      }
    }
    if (running > 0 && Clock::now() > kill_at) {
      for (const Child& c : children) signal_rank(c, SIGKILL);
      kill_at = Clock::time_point::max();
    }
  }

  if (failed_rank >= 0) {
    std::fprintf(stderr, "fgrun: rank %d %s\n", failed_rank, describe(failed_status).c_str());
    return exit_code(failed_status);
  }
  return interrupted ? 128 + interrupted : 0;
}
