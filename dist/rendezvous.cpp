// Launcher variables and the TCP bootstrap. The protocol: a rank connects and
// sends {magic, world size, rank} (three int32, host byte order: the ranks
// share an architecture); rank 0 checks them and answers {length, payload}.
// Every socket wait goes through poll() with the time left to the deadline.
#include "dist/rendezvous.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "dist/communicator.h"

namespace fg::dist {

namespace {

using Clock = std::chrono::steady_clock;
constexpr int32_t kMagic = 0x46475256;  // "FGRV"
constexpr uint32_t kMaxPayload = 1 << 20;

// Owns a socket descriptor.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Socket& operator=(Socket&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() { reset(); }
  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd_ = -1;
};

int ms_left(Clock::time_point deadline) {
  auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(std::min<int64_t>(left, 1000000)) : 0;
}

// Waits until fd is readable (events = POLLIN) or writable; false on timeout.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, ms_left(deadline));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return false;
  }
}

// Empty on success, else why (for the caller's sentence).
std::string send_all(int fd, const void* data, size_t size, Clock::time_point deadline) {
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    if (!wait_for(fd, POLLOUT, deadline)) return "timed out sending";
    ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return std::strerror(errno);
    p += n;
    size -= static_cast<size_t>(n);
  }
  return "";
}

std::string recv_all(int fd, void* data, size_t size, Clock::time_point deadline) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    if (!wait_for(fd, POLLIN, deadline)) return "timed out receiving";
    ssize_t n = ::recv(fd, p, size, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n == 0) return "the connection was closed";
    if (n < 0) return std::strerror(errno);
    p += n;
    size -= static_cast<size_t>(n);
  }
  return "";
}

void set_nonblocking(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
}

std::string endpoint(const ProcessGroup& pg) {
  return str_cat(pg.master_addr, ":", pg.master_port);
}

std::vector<uint8_t> serve(const ProcessGroup& pg, const std::vector<uint8_t>& payload,
                           double timeout_s, Clock::time_point deadline) {
  Socket listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  FG_CHECK(listener.valid(), "rendezvous: rank 0 cannot create a socket: ", std::strerror(errno));
  int one = 1;
  ::setsockopt(listener.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(pg.master_port));
  FG_CHECK(::bind(listener.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0,
           "rendezvous: rank 0 cannot listen on port ", pg.master_port, ": ", std::strerror(errno),
           " (pick another MASTER_PORT)");
  FG_CHECK(::listen(listener.fd(), pg.world_size) == 0, "rendezvous: rank 0 cannot listen on port ",
           pg.master_port, ": ", std::strerror(errno));
  set_nonblocking(listener.fd());

  std::vector<bool> joined(pg.world_size, false);
  joined[0] = true;
  int waiting = pg.world_size - 1;
  const uint32_t length = static_cast<uint32_t>(payload.size());
  while (waiting > 0) {
    if (!wait_for(listener.fd(), POLLIN, deadline)) {
      std::vector<int> missing;
      for (int r = 0; r < pg.world_size; ++r)
        if (!joined[r]) missing.push_back(r);
      FG_THROW("rendezvous: rank 0 waited ", timeout_s, " s on port ", pg.master_port, " for ",
               detail::rank_list(missing), " of ", pg.world_size, " to connect");
    }
    Socket peer(::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!peer.valid()) continue;  // a connection that went away, or EAGAIN
    int32_t hello[3] = {0, 0, 0};
    if (!recv_all(peer.fd(), hello, sizeof hello, deadline).empty() || hello[0] != kMagic)
      continue;  // not one of ours: a port scanner, a stale client
    FG_CHECK(hello[1] == pg.world_size, "rendezvous: rank ", hello[2], " says the world has ",
             hello[1], " ranks but rank 0 has WORLD_SIZE ", pg.world_size,
             "; every rank must be started with the same world size");
    int r = hello[2];
    FG_CHECK(r > 0 && r < pg.world_size && !joined[r],
             "rendezvous: a second process connected as rank ", r, " (of ", pg.world_size,
             "); every rank needs its own RANK");
    std::string err = send_all(peer.fd(), &length, sizeof length, deadline);
    if (err.empty()) err = send_all(peer.fd(), payload.data(), payload.size(), deadline);
    FG_CHECK(err.empty(), "rendezvous: rank 0 could not answer rank ", r, ": ", err);
    joined[r] = true;
    --waiting;
  }
  return payload;
}

// One connection attempt; an invalid Socket and *why set on failure.
Socket try_connect(const ProcessGroup& pg, Clock::time_point deadline, std::string* why) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::string port = std::to_string(pg.master_port);
  int rc = ::getaddrinfo(pg.master_addr.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    *why = str_cat("cannot resolve MASTER_ADDR '", pg.master_addr, "': ", ::gai_strerror(rc));
    return Socket();
  }
  Socket s;
  for (addrinfo* a = found; a; a = a->ai_next) {
    Socket c(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!c.valid()) continue;
    set_nonblocking(c.fd());
    if (::connect(c.fd(), a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
      *why = std::strerror(errno);
      continue;
    }
    // A silent host must not hold us past the deadline: wait at most a second per try.
    auto until = std::min(deadline, Clock::now() + std::chrono::seconds(1));
    if (!wait_for(c.fd(), POLLOUT, until)) {
      *why = "no answer";
      continue;
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(c.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      *why = std::strerror(err);
      continue;
    }
    s = std::move(c);
    break;
  }
  ::freeaddrinfo(found);
  return s;
}

std::vector<uint8_t> join(const ProcessGroup& pg, double timeout_s, Clock::time_point deadline) {
  std::string why = "no answer";
  Socket s;
  while (!(s = try_connect(pg, deadline, &why)).valid()) {
    FG_CHECK(Clock::now() + std::chrono::milliseconds(100) < deadline, "rendezvous: rank ", pg.rank,
             " could not reach rank 0 at ", endpoint(pg), " within ", timeout_s, " s (", why,
             "); is rank 0 running, and are MASTER_ADDR and MASTER_PORT the same on every rank?");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  int32_t hello[3] = {kMagic, pg.world_size, pg.rank};
  std::string err = send_all(s.fd(), hello, sizeof hello, deadline);
  uint32_t length = 0;
  if (err.empty()) err = recv_all(s.fd(), &length, sizeof length, deadline);
  if (err.empty() && length > kMaxPayload) err = str_cat("a reply of ", length, " bytes");
  std::vector<uint8_t> payload(err.empty() ? length : 0);
  if (err.empty()) err = recv_all(s.fd(), payload.data(), payload.size(), deadline);
  FG_CHECK(err.empty(), "rendezvous: rank ", pg.rank, " got no answer from rank 0 at ",
           endpoint(pg), " within ", timeout_s, " s (", err,
           "); rank 0 may have rejected it (check its log)");
  return payload;
}

int parse_int(const char* name, const char* value) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(value, &end, 10);
  FG_CHECK(*value != '\0' && *end == '\0' && errno == 0 && v >= 0 && v <= 1 << 30,
           "environment: ", name, "='", value, "' is not a non-negative integer");
  return static_cast<int>(v);
}

}  // namespace

std::optional<ProcessGroup> process_group_from_env(
    const std::function<const char*(const char*)>& getenv) {
  // local_size / nodes: what tells that every rank runs on this node, so
  // MASTER_ADDR may default to the loopback address.
  struct Names {
    const char *launcher, *rank, *size, *local_rank, *local_size, *nodes;
  };
  static const Names kLaunchers[] = {
      {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", nullptr},
      {"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
       "OMPI_COMM_WORLD_LOCAL_SIZE", nullptr},
      {"srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", nullptr, "SLURM_NNODES"},
  };
  auto equals = [&](const char* name, int expected) {
    const char* v = name ? getenv(name) : nullptr;
    return v && std::string(v) == std::to_string(expected);
  };
  for (const Names& n : kLaunchers) {
    const char* rank = getenv(n.rank);
    const char* size = getenv(n.size);
    if (!rank && !size) continue;
    FG_CHECK(rank && size, "environment: ", rank ? n.size : n.rank, " is not set but ",
             rank ? n.rank : n.size, " is (", n.launcher, " sets both)");
    ProcessGroup pg;
    pg.launcher = n.launcher;
    pg.rank = parse_int(n.rank, rank);
    pg.world_size = parse_int(n.size, size);
    FG_CHECK(pg.world_size >= 1 && pg.rank < pg.world_size, "environment: ", n.rank, "=", pg.rank,
             " is not below ", n.size, "=", pg.world_size);
    const char* local = getenv(n.local_rank);
    pg.local_rank = local ? parse_int(n.local_rank, local) : 0;
    bool one_node = equals(n.local_size, pg.world_size) || equals(n.nodes, 1);
    if (const char* addr = getenv("MASTER_ADDR")) {
      pg.master_addr = addr;
    } else {
      FG_CHECK(pg.world_size == 1 || one_node, "environment: MASTER_ADDR is not set; with ",
               n.launcher,
               " across several nodes set MASTER_ADDR (and MASTER_PORT) to rank 0's host");
    }
    if (const char* port = getenv("MASTER_PORT")) {
      pg.master_port = parse_int("MASTER_PORT", port);
      FG_CHECK(pg.master_port > 0 && pg.master_port < 65536, "environment: MASTER_PORT=", port,
               " is not a TCP port");
    }
    return pg;
  }
  return std::nullopt;
}

std::vector<uint8_t> share_from_rank0(const ProcessGroup& pg, const std::vector<uint8_t>& payload,
                                      double timeout_s) {
  FG_CHECK(pg.world_size >= 1 && pg.rank >= 0 && pg.rank < pg.world_size, "rendezvous: rank ",
           pg.rank, " of a world of ", pg.world_size);
  FG_CHECK(timeout_s > 0, "rendezvous: timeout must be > 0 s, got ", timeout_s);
  FG_CHECK(payload.size() <= kMaxPayload || pg.rank != 0, "rendezvous: payload of ", payload.size(),
           " bytes is too large");
  auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(timeout_s));
  if (pg.rank == 0) return pg.world_size == 1 ? payload : serve(pg, payload, timeout_s, deadline);
  return join(pg, timeout_s, deadline);
}

}  // namespace fg::dist
