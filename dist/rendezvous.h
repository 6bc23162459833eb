// Rendezvous: where this process sits in a multi-process job (from the
// variables torchrun, fgrun, mpirun or srun set), and a bootstrap exchange over
// TCP that hands rank 0's bytes (the NCCL unique id) to every rank.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace fg::dist {

struct ProcessGroup {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;                     // which GPU of this node
  std::string master_addr = "127.0.0.1";  // rank 0's host (IPv4 address or name)
  int master_port = 29500;
  std::string launcher;  // whose variables were read: "torchrun", "mpirun" or "srun"
};

// Reads RANK, WORLD_SIZE, LOCAL_RANK (torchrun, fgrun); else OMPI_COMM_WORLD_RANK,
// OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK (mpirun); else SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID (srun); and MASTER_ADDR, MASTER_PORT (default 29500;
// MASTER_ADDR may be left out only when every rank runs on one node). nullopt
// when no launcher variables are set. `getenv` is for tests.
std::optional<ProcessGroup> process_group_from_env(
    const std::function<const char*(const char*)>& getenv = [](const char* n) {
      return std::getenv(n);
    });

// Rank 0 listens on master_port and sends `payload` to every other rank; the
// others connect to master_addr:master_port (retrying until rank 0 listens) and
// return what rank 0 sent. Every wait is bounded by timeout_s; a rank that does
// not show up makes rank 0 throw naming it.
std::vector<uint8_t> share_from_rank0(const ProcessGroup& pg, const std::vector<uint8_t>& payload,
                                      double timeout_s);

}  // namespace fg::dist
