// GradReducer: bucket layout, the gradient-ready hooks that start each
// bucket's reduction, and the ZeRO-1 pieces (see ddp.h).
#include "dist/ddp.h"

#include <algorithm>

namespace fg::dist {

struct GradReducer::State {
  struct Bucket {
    std::vector<size_t> params;    // parameter indices, reverse parameter order
    std::vector<int64_t> offsets;  // where each starts in flat
    int64_t numel = 0;             // padded to a multiple of the world size when sharding
    Tensor flat;                   // (numel,) the packed gradients
    std::vector<size_t> pieces;    // shard mode: indices into State::pieces
    int pending = 0;               // gradients not ready yet in this backward
    std::unique_ptr<Work> work;
  };

  std::vector<ag::Variable> params;
  std::shared_ptr<Communicator> comm;
  ReducerOptions options;
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of;  // parameter -> bucket
  std::vector<Piece> pieces;
  std::vector<int64_t> piece_flat;  // where each piece sits in its bucket's flat
  std::vector<size_t> piece_bucket;
  std::vector<bool> ready;
  size_t next = 0;  // the next bucket to start: they start in index order
  bool armed = false;

  int64_t chunk(const Bucket& b) const { return b.numel / comm->world_size(); }
  Tensor chunk_of(const Bucket& b, const Tensor& flat) const {
    int64_t c = chunk(b);
    return flat.slice(0, comm->rank() * c, (comm->rank() + 1) * c);
  }
  Tensor flat_param(size_t i) const { return params[i].data().view({-1}); }
  Tensor piece_grad(size_t k) const {
    return buckets[piece_bucket[k]].flat.slice(0, piece_flat[k], piece_flat[k] + pieces[k].numel);
  }

  void on_ready(size_t i) {
    if (!armed || ready[i]) return;
    ready[i] = true;
    --buckets[bucket_of[i]].pending;
    while (next < buckets.size() && buckets[next].pending == 0) start(next++);
  }

  // Packs the bucket's gradients (zeros for a parameter that has none) and starts its reduction.
  void start(size_t index) {
    Bucket& b = buckets[index];
    for (size_t j = 0; j < b.params.size(); ++j) {
      const Tensor& g = params[b.params[j]].grad();
      Tensor dst = b.flat.slice(0, b.offsets[j], b.offsets[j] + params[b.params[j]].data().numel());
      if (g.defined()) {
        dst.copy_(g.reshape({-1}));
      } else {
        dst.zero_();
      }
    }
    b.work = options.shard ? comm->reduce_scatter_async(b.flat, chunk_of(b, b.flat), ReduceOp::Avg)
                           : comm->all_reduce_async(b.flat, ReduceOp::Avg);
  }

  // Writes this rank's pieces into `flat` (a buffer laid out like bucket b)
  // from src(k), then all-gathers it in place: every rank gets every piece.
  template <class Src>
  void gather_bucket(const Bucket& b, const Tensor& flat, const Src& src) const {
    for (size_t k : b.pieces)
      flat.slice(0, piece_flat[k], piece_flat[k] + pieces[k].numel).copy_(src(k));
    comm->all_gather(chunk_of(b, flat), flat);
  }
};

GradReducer::GradReducer(const std::vector<ag::Variable>& params,
                         std::shared_ptr<Communicator> comm, ReducerOptions options)
    : state_(std::make_shared<State>()) {
  State& s = *state_;
  FG_CHECK(comm, "GradReducer: no communicator");
  FG_CHECK(!params.empty(), "GradReducer: no parameters");
  FG_CHECK(options.bucket_bytes > 0, "GradReducer: bucket size must be > 0 bytes, got ",
           options.bucket_bytes);
  s.params = params;
  s.comm = std::move(comm);
  s.options = options;
  const Tensor& first = params[0].data();
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i].data();
    FG_CHECK(p.dtype() == first.dtype() && p.device() == s.comm->device() && p.is_contiguous(),
             "GradReducer: parameter ", i, " is ", p.describe(), " but every parameter must be ",
             dtype_name(first.dtype()), ", contiguous and on the communicator's device ",
             s.comm->device().str());
  }

  // Buckets in reverse parameter order, each closed once it reaches bucket_bytes.
  const int world = s.comm->world_size();
  const int64_t elem = static_cast<int64_t>(dtype_size(first.dtype()));
  s.bucket_of.resize(params.size());
  State::Bucket open;
  auto close = [&] {
    if (options.shard) open.numel = (open.numel + world - 1) / world * world;
    open.flat = Tensor::zeros({open.numel}, first.dtype(), first.device());
    s.buckets.push_back(std::move(open));
    open = State::Bucket();
  };
  for (size_t i = params.size(); i-- > 0;) {
    s.bucket_of[i] = s.buckets.size();
    open.params.push_back(i);
    open.offsets.push_back(open.numel);
    open.numel += params[i].data().numel();
    if (open.numel * elem >= options.bucket_bytes) close();
  }
  if (!open.params.empty()) close();

  if (options.shard) {
    // Rank r owns chunk r of every bucket: the parts of parameters inside it are its pieces.
    for (size_t bi = 0; bi < s.buckets.size(); ++bi) {
      const State::Bucket& b = s.buckets[bi];
      int64_t lo = s.comm->rank() * s.chunk(b), hi = lo + s.chunk(b);
      for (size_t j = 0; j < b.params.size(); ++j) {
        int64_t begin = b.offsets[j], end = begin + params[b.params[j]].data().numel();
        int64_t a = std::max(begin, lo), e = std::min(end, hi);
        if (a >= e) continue;
        s.pieces.push_back({b.params[j], a - begin, e - a});
        s.piece_flat.push_back(a);
        s.piece_bucket.push_back(bi);
      }
    }
    // Parameter order, so optimizer states line up with the parameter table.
    std::vector<size_t> order(s.pieces.size());
    for (size_t k = 0; k < order.size(); ++k) order[k] = k;
    std::sort(order.begin(), order.end(),
              [&](size_t x, size_t y) { return s.pieces[x].param < s.pieces[y].param; });
    std::vector<Piece> pieces;
    std::vector<int64_t> flat;
    std::vector<size_t> bucket;
    for (size_t k : order) {
      pieces.push_back(s.pieces[k]);
      flat.push_back(s.piece_flat[k]);
      bucket.push_back(s.piece_bucket[k]);
      s.buckets[s.piece_bucket[k]].pieces.push_back(pieces.size() - 1);
    }
    s.pieces = std::move(pieces);
    s.piece_flat = std::move(flat);
    s.piece_bucket = std::move(bucket);
  }

  std::weak_ptr<State> weak = state_;
  for (size_t i = 0; i < params.size(); ++i) {
    ag::Variable p = params[i];
    p.register_grad_ready_hook([weak, i](ag::Variable&) {
      if (auto live = weak.lock()) live->on_ready(i);
    });
  }
}

GradReducer::~GradReducer() = default;

Communicator& GradReducer::comm() const {
  return *state_->comm;
}
bool GradReducer::sharded() const {
  return state_->options.shard;
}
int GradReducer::num_buckets() const {
  return static_cast<int>(state_->buckets.size());
}

void GradReducer::broadcast_parameters(int root) {
  for (const ag::Variable& p : state_->params) state_->comm->broadcast(p.data(), root);
}

void GradReducer::arm() {
  State& s = *state_;
  s.ready.assign(s.params.size(), false);
  for (State::Bucket& b : s.buckets) {
    b.pending = static_cast<int>(b.params.size());
    b.work.reset();
  }
  s.next = 0;
  s.armed = true;
}

void GradReducer::finish() {
  State& s = *state_;
  FG_CHECK(s.armed, "GradReducer::finish: arm() was not called before this step's last backward");
  s.armed = false;
  while (s.next < s.buckets.size()) s.start(s.next++);
  for (State::Bucket& b : s.buckets) {
    b.work->wait();
    b.work.reset();
  }
  if (s.options.shard) return;
  for (const State::Bucket& b : s.buckets) {
    for (size_t j = 0; j < b.params.size(); ++j) {
      ag::Variable p = s.params[b.params[j]];
      const Tensor& data = p.data();
      if (!p.grad().defined()) p.set_grad(Tensor::zeros(data.shape(), data.dtype(), data.device()));
      p.grad().view({-1}).copy_(b.flat.slice(0, b.offsets[j], b.offsets[j] + data.numel()));
    }
  }
}

const std::vector<GradReducer::Piece>& GradReducer::pieces() const {
  return state_->pieces;
}

std::vector<Tensor> GradReducer::piece_grads() const {
  std::vector<Tensor> out;
  for (size_t k = 0; k < state_->pieces.size(); ++k) out.push_back(state_->piece_grad(k));
  return out;
}

std::vector<Tensor> GradReducer::gradient_shards() const {
  std::vector<Tensor> out(state_->params.size());
  for (size_t k = 0; k < state_->pieces.size(); ++k)
    out[state_->pieces[k].param] = state_->piece_grad(k);
  return out;
}

std::vector<Tensor> GradReducer::pieces_of(const std::vector<Tensor>& full) const {
  const State& s = *state_;
  FG_CHECK(full.size() == s.params.size(), "GradReducer::pieces_of: ", full.size(), " tensors for ",
           s.params.size(), " parameters");
  std::vector<Tensor> out;
  for (const Piece& p : s.pieces)
    out.push_back(full[p.param].reshape({-1}).slice(0, p.offset, p.offset + p.numel));
  return out;
}

std::vector<Tensor> GradReducer::gather_pieces(const std::vector<Tensor>& piece_tensors) const {
  const State& s = *state_;
  FG_CHECK(piece_tensors.size() == s.pieces.size(),
           "GradReducer::gather_pieces: ", piece_tensors.size(), " tensors for ", s.pieces.size(),
           " pieces");
  std::vector<Tensor> out(s.params.size());
  for (const State::Bucket& b : s.buckets) {
    Tensor flat = Tensor::zeros({b.numel}, b.flat.dtype(), b.flat.device());
    s.gather_bucket(b, flat, [&](size_t k) { return piece_tensors[k].reshape({-1}); });
    for (size_t j = 0; j < b.params.size(); ++j) {
      const Tensor& p = s.params[b.params[j]].data();
      out[b.params[j]] = flat.slice(0, b.offsets[j], b.offsets[j] + p.numel()).view(p.shape());
    }
  }
  return out;
}

void GradReducer::all_gather_params() {
  const State& s = *state_;
  for (const State::Bucket& b : s.buckets) {
    // The bucket's gradient buffer is free once the optimizer has used the gradients.
    s.gather_bucket(b, b.flat, [&](size_t k) {
      const Piece& p = s.pieces[k];
      return s.flat_param(p.param).slice(0, p.offset, p.offset + p.numel);
    });
    for (size_t j = 0; j < b.params.size(); ++j) {
      Tensor dst = s.flat_param(b.params[j]);
      dst.copy_(b.flat.slice(0, b.offsets[j], b.offsets[j] + dst.numel()));
    }
  }
}

}  // namespace fg::dist
