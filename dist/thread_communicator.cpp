// ThreadWorld: every collective is two meetings of all ranks. At the first,
// each rank posts its tensors; between the two, each rank computes its own
// result from everyone's inputs into private memory; after the second (nobody
// reads inputs any more) it writes the result. Waits are bounded by the timeout
// and end early when the world is aborted.
#include "dist/thread_communicator.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

namespace fg::dist {

namespace {

// What a rank brings to a collective.
struct Post {
  std::string what;  // "all_reduce of 4096 f32 elements"
  int root = -1;
  const Tensor* input = nullptr;
};

}  // namespace

struct ThreadWorld::Impl {
  int size;
  double timeout;
  std::mutex mutex;
  std::condition_variable cv;
  int64_t meeting = 0;  // meetings completed so far
  std::vector<bool> arrived;
  int arrived_count = 0;
  std::vector<Post> posts;
  bool failed = false;
  std::string failure;  // why, naming the rank at fault

  // Blocks until every rank has called meet() for the current meeting; `post`
  // (if given) becomes visible to all of them.
  void meet(int rank, const std::string& what, const Post* post) {
    std::unique_lock<std::mutex> lock(mutex);
    if (failed) FG_THROW("rank ", rank, ": ", what, " failed: ", failure);
    if (post) posts[rank] = *post;
    const int64_t mine = meeting;
    arrived[rank] = true;
    if (++arrived_count == size) {
      arrived_count = 0;
      arrived.assign(size, false);
      ++meeting;
      cv.notify_all();
      return;
    }
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(timeout));
    cv.wait_until(lock, deadline, [&] { return meeting != mine || failed; });
    if (meeting != mine) return;
    if (failed) FG_THROW("rank ", rank, ": ", what, " failed: ", failure);
    std::vector<int> missing;
    for (int r = 0; r < size; ++r)
      if (!arrived[r]) missing.push_back(r);
    failed = true;
    failure = str_cat("rank ", rank, ": ", what, " timed out after ", timeout, " s waiting for ",
                      detail::rank_list(missing));
    cv.notify_all();
    FG_THROW(failure);
  }

  // After the first meeting: every rank must have posted the same collective.
  void check_posts(int rank) {
    for (int r = 0; r < size; ++r) {
      if (posts[r].what == posts[rank].what && posts[r].root == posts[rank].root) continue;
      std::string msg =
          str_cat("rank ", rank, ": ", posts[rank].what, " does not match rank ", r, "'s ",
                  posts[r].what, "; every rank must call the same collectives in the same order");
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (!failed) {
          failed = true;
          failure = msg;
          cv.notify_all();
        }
      }
      FG_THROW(msg);
    }
  }
};

ThreadWorld::ThreadWorld(int world_size, double timeout_s) : impl_(std::make_unique<Impl>()) {
  FG_CHECK(world_size >= 1, "ThreadWorld: world size must be >= 1, got ", world_size);
  FG_CHECK(timeout_s > 0, "ThreadWorld: timeout must be > 0 s, got ", timeout_s);
  impl_->size = world_size;
  impl_->timeout = timeout_s;
  impl_->arrived.assign(world_size, false);
  impl_->posts.resize(world_size);
}

ThreadWorld::~ThreadWorld() = default;

int ThreadWorld::world_size() const {
  return impl_->size;
}
double ThreadWorld::timeout() const {
  return impl_->timeout;
}

void ThreadWorld::abort(int rank, const std::string& reason) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (impl_->failed) return;  // keep the first cause
  impl_->failed = true;
  impl_->failure = str_cat("rank ", rank, " failed: ", reason);
  impl_->cv.notify_all();
}

ThreadCommunicator::ThreadCommunicator(std::shared_ptr<ThreadWorld> world, int rank)
    : world_(std::move(world)), rank_(rank) {
  FG_CHECK(world_, "ThreadCommunicator: no world");
  FG_CHECK(rank >= 0 && rank < world_->world_size(), "ThreadCommunicator: rank ", rank,
           " is outside the world of ", world_->world_size(), " ranks");
}

int ThreadCommunicator::world_size() const {
  return world_->world_size();
}

namespace {

// sum over ranks of src[r][offset + i], i < n, added in rank order in f64;
// divided by the world size for Avg.
template <class T>
std::vector<double> reduce_ranks(const std::vector<Post>& posts, int64_t offset, int64_t n,
                                 ReduceOp op) {
  std::vector<double> acc(static_cast<size_t>(n), 0.0);
  for (const Post& p : posts) {
    const T* src = p.input->data<T>() + offset;
    for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<double>(src[i]);
  }
  if (op == ReduceOp::Avg) {
    double size = static_cast<double>(posts.size());
    for (double& x : acc) x /= size;
  }
  return acc;
}

template <class T>
void store(const Tensor& dst, const std::vector<double>& values) {
  T* out = dst.data<T>();
  for (size_t i = 0; i < values.size(); ++i) out[i] = static_cast<T>(values[i]);
}

}  // namespace

namespace {

// One collective: post, check that every rank posted the same, read the
// others' inputs (read), meet again so nobody reads any more, then write.
template <class Read, class Write>
void collective(ThreadWorld::Impl& w, int rank, const Post& post, const Read& read,
                const Write& write) {
  w.meet(rank, post.what, &post);
  w.check_posts(rank);
  read();
  w.meet(rank, post.what, nullptr);
  write();
}

std::string with_op(const char* collective, const Tensor& t, ReduceOp op) {
  return detail::describe_collective(collective, t) + " (" + reduce_op_name(op) + ")";
}

}  // namespace

void ThreadCommunicator::all_reduce(const Tensor& t, ReduceOp op) {
  detail::check_all_reduce(*this, t);
  ThreadWorld::Impl& w = *world_->impl_;
  dispatch_float("all_reduce", t.dtype(), [&]<class T>() {
    std::vector<double> result;
    collective(
        w, rank_, Post{with_op("all_reduce", t, op), -1, &t},
        [&] { result = reduce_ranks<T>(w.posts, 0, t.numel(), op); }, [&] { store<T>(t, result); });
  });
}

void ThreadCommunicator::reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op) {
  detail::check_reduce_scatter(*this, input, output);
  ThreadWorld::Impl& w = *world_->impl_;
  dispatch_float("reduce_scatter", input.dtype(), [&]<class T>() {
    std::vector<double> result;
    const int64_t n = output.numel();
    collective(
        w, rank_, Post{with_op("reduce_scatter", input, op), -1, &input},
        [&] { result = reduce_ranks<T>(w.posts, rank_ * n, n, op); },
        [&] { store<T>(output, result); });  // output may alias input: only after everyone read
  });
}

void ThreadCommunicator::all_gather(const Tensor& input, const Tensor& output) {
  detail::check_all_gather(*this, input, output);
  ThreadWorld::Impl& w = *world_->impl_;
  // Rank r writes only its own output, and the parts of it no one reads (in
  // place, the others read only chunk r of it), so it may write while reading.
  const size_t bytes = input.nbytes();
  auto* out = static_cast<char*>(output.raw_data());
  collective(
      w, rank_, Post{detail::describe_collective("all_gather", input), -1, &input},
      [&] {
        for (int r = 0; r < w.size; ++r) {
          const void* src = w.posts[r].input->raw_data();
          if (src != out + r * bytes) std::memcpy(out + r * bytes, src, bytes);
        }
      },
      [] {});
}

void ThreadCommunicator::broadcast(const Tensor& t, int root) {
  detail::check_broadcast(*this, t, root);
  ThreadWorld::Impl& w = *world_->impl_;
  collective(
      w, rank_,
      Post{detail::describe_collective("broadcast", t) + " from rank " + std::to_string(root), root,
           &t},
      [&] {
        if (rank_ != root) std::memcpy(t.raw_data(), w.posts[root].input->raw_data(), t.nbytes());
      },
      [] {});
}

void ThreadCommunicator::barrier() {
  collective(
      *world_->impl_, rank_, Post{"barrier", -1, nullptr}, [] {}, [] {});
}

std::vector<std::string> run_on_threads(
    int world_size, double timeout_s,
    const std::function<void(const std::shared_ptr<Communicator>&)>& fn) {
  auto world = std::make_shared<ThreadWorld>(world_size, timeout_s);
  std::vector<std::string> errors(world_size);
  std::vector<std::thread> threads;
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(std::make_shared<ThreadCommunicator>(world, r));
      } catch (const std::exception& e) {
        errors[r] = e.what();
        world->abort(r, e.what());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return errors;
}

}  // namespace fg::dist
