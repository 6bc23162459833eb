// The argument checks every Communicator shares, and the synchronous defaults
// of the asynchronous collectives.
#include "dist/communicator.h"

namespace fg::dist {

const char* reduce_op_name(ReduceOp op) {
  return op == ReduceOp::Sum ? "sum" : "avg";
}

namespace {

// What wait() does for a collective that already finished.
class DoneWork final : public Work {
 public:
  void wait() override {}
};

void check_tensor(const Communicator& c, const char* collective, const char* name,
                  const Tensor& t) {
  FG_CHECK(t.defined(), "rank ", c.rank(), ": ", collective, ": ", name, " is undefined");
  FG_CHECK(t.is_contiguous(), "rank ", c.rank(), ": ", collective, ": ", name, " ", t.describe(),
           " is not contiguous");
  FG_CHECK(t.device() == c.device(), "rank ", c.rank(), ": ", collective, ": ", name, " is on ",
           t.device().str(), " but the ", c.name(), " communicator works on ", c.device().str());
  FG_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64, "rank ", c.rank(), ": ", collective,
           ": ", name, " is ", dtype_name(t.dtype()), "; collectives take f32 or f64");
}

}  // namespace

std::unique_ptr<Work> Communicator::all_reduce_async(const Tensor& t, ReduceOp op) {
  all_reduce(t, op);
  return std::make_unique<DoneWork>();
}

std::unique_ptr<Work> Communicator::reduce_scatter_async(const Tensor& input, const Tensor& output,
                                                         ReduceOp op) {
  reduce_scatter(input, output, op);
  return std::make_unique<DoneWork>();
}

namespace detail {

std::string rank_list(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

std::string describe_collective(const char* collective, const Tensor& t) {
  return str_cat(collective, " of ", t.numel(), " ", dtype_name(t.dtype()), " elements");
}

void check_all_reduce(const Communicator& c, const Tensor& t) {
  check_tensor(c, "all_reduce", "tensor", t);
}

void check_reduce_scatter(const Communicator& c, const Tensor& input, const Tensor& output) {
  check_tensor(c, "reduce_scatter", "input", input);
  check_tensor(c, "reduce_scatter", "output", output);
  FG_CHECK(input.numel() == output.numel() * c.world_size() && input.dtype() == output.dtype(),
           "rank ", c.rank(), ": reduce_scatter: input ", input.describe(),
           " must hold world size (", c.world_size(), ") times the elements of output ",
           output.describe());
}

void check_all_gather(const Communicator& c, const Tensor& input, const Tensor& output) {
  check_tensor(c, "all_gather", "input", input);
  check_tensor(c, "all_gather", "output", output);
  FG_CHECK(output.numel() == input.numel() * c.world_size() && input.dtype() == output.dtype(),
           "rank ", c.rank(), ": all_gather: output ", output.describe(), " must hold world size (",
           c.world_size(), ") times the elements of input ", input.describe());
}

void check_broadcast(const Communicator& c, const Tensor& t, int root) {
  check_tensor(c, "broadcast", "tensor", t);
  FG_CHECK(root >= 0 && root < c.world_size(), "rank ", c.rank(), ": broadcast from rank ", root,
           " but the world has ranks 0..", c.world_size() - 1);
}

}  // namespace detail

}  // namespace fg::dist
