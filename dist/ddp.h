// DDP gradient bucketing. Parameters are grouped into buckets of about
// bucket_bytes, filled in reverse parameter order (the order backward produces
// the gradients); once backward has delivered the last gradient of a bucket
// (autograd's gradient-ready hook) the bucket is packed into one flat buffer
// and reduced across ranks, overlapping the rest of backward. Buckets start in
// index order on every rank, so all ranks issue the same collectives in the
// same order.
//
// Two modes:
//  - replicate (DDP): all-reduce (mean); finish() writes the mean back into
//    every parameter's gradient.
//  - shard (ZeRO-1): reduce-scatter (mean); rank r keeps chunk r of each bucket
//    (buckets are padded to a multiple of the world size). Its "pieces" (the
//    parts of parameters that fall in its chunks) are all it updates;
//    all_gather_params() then makes every parameter whole on every rank.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "autograd/variable.h"
#include "dist/communicator.h"

namespace fg::dist {

struct ReducerOptions {
  int64_t bucket_bytes = int64_t{25} << 20;
  bool shard = false;  // ZeRO-1: reduce-scatter instead of all-reduce
};

class GradReducer {
 public:
  // params: one dtype, on comm->device(), contiguous. Registers the hooks.
  GradReducer(const std::vector<ag::Variable>& params, std::shared_ptr<Communicator> comm,
              ReducerOptions options);
  ~GradReducer();  // the hooks stay registered but do nothing
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  Communicator& comm() const;
  bool sharded() const;
  int num_buckets() const;

  // Every rank takes root's parameter values (so all ranks start identical).
  void broadcast_parameters(int root = 0);

  // Reduce the gradients of the next backward as they become ready; call it
  // before the backward of the last micro-batch of a step (earlier micro-batches
  // only accumulate).
  void arm();
  // Starts the buckets backward did not complete (their missing gradients count
  // as zeros) and waits for all of them. Replicate: every parameter's grad is
  // then the mean over ranks. Shard: piece_grads() hold this rank's part of it.
  void finish();

  // This rank's share of the flattened parameters (shard mode; empty otherwise).
  struct Piece {
    size_t param;    // index into params
    int64_t offset;  // first element, in the flattened parameter
    int64_t numel;
  };
  const std::vector<Piece>& pieces() const;  // in parameter order, at most one per parameter
  // The mean gradient of each piece: 1-D views, valid from finish() to the next arm().
  std::vector<Tensor> piece_grads() const;
  // One tensor per parameter, in parameter order: its piece's mean gradient, or
  // undefined where this rank holds none of it (what a gradient hook sees under ZeRO-1).
  std::vector<Tensor> gradient_shards() const;
  // 1-D views of this rank's pieces of full per-parameter tensors (for loading states).
  std::vector<Tensor> pieces_of(const std::vector<Tensor>& full) const;
  // The inverse, a collective: full per-parameter tensors from every rank's
  // per-piece tensors (for saving sharded optimizer states).
  std::vector<Tensor> gather_pieces(const std::vector<Tensor>& piece_tensors) const;
  // Every rank updated its pieces in place; afterwards every rank holds all of them.
  void all_gather_params();

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace fg::dist
