// GemmBatch (gemm.h): backward's weight-gradient products queued and run together.
#include <cstdint>
#include <utility>
#include <vector>

#include "ops/gemm/gemm.h"

#ifdef FG_CUDA
#include "core/cuda_utils.h"
#endif

namespace fg::ops {

namespace {

// A product whose output alone covers the GPU this many times over in 128 x 128 tiles
// gains nothing from company: it runs at once and keeps no operands alive (the 1B
// model's weight gradients; GPT-2-small's cover it 0.2-1.5 times).
constexpr int64_t kWavesAlone = 4;

bool fills_the_gpu(const Tensor& c) {
#ifdef FG_CUDA
  if (c.is_cuda()) return c.size(0) * c.size(1) >= kWavesAlone * 128 * 128 * cuda::sm_count();
#endif
  (void)c;
  return false;  // on the CPU every product waits, as the tests of the queue want
}

struct Product {
  Tensor a, b, c;
  bool trans_a, trans_b;
  double alpha, beta;
};

// Bytes [first, last) a tensor spans in its storage.
struct Span {
  uintptr_t first, last;
  bool overlaps(const Span& o) const { return first < o.last && o.first < last; }
};
Span span_of(const Tensor& t) {
  const auto first = reinterpret_cast<uintptr_t>(t.raw_data());
  if (t.numel() == 0) return {first, first};
  int64_t elems = 1;
  for (int d = 0; d < t.dim(); ++d) elems += (t.size(d) - 1) * t.strides()[d];
  return {first, first + static_cast<uintptr_t>(elems) * dtype_size(t.dtype())};
}

// Products that may run as one batched call: the same problem in every respect but the
// addresses.
bool same_problem(const Product& x, const Product& y) {
  auto same_matrix = [](const Tensor& s, const Tensor& t) {
    return s.shape() == t.shape() && s.strides()[0] == t.strides()[0] && s.dtype() == t.dtype();
  };
  return x.c.device() == y.c.device() && x.trans_a == y.trans_a && x.trans_b == y.trans_b &&
         x.alpha == y.alpha && x.beta == y.beta && same_matrix(x.a, y.a) && same_matrix(x.b, y.b) &&
         same_matrix(x.c, y.c);
}

void run_group(const std::vector<const Product*>& group) {
  const Product& p = *group.front();
#ifdef FG_CUDA
  if (p.c.is_cuda() && group.size() > 1) {
    std::vector<Tensor> a, b, c;
    for (const Product* q : group) {
      a.push_back(q->a);
      b.push_back(q->b);
      c.push_back(q->c);
    }
    return detail::gemm_cuda_batched(a, p.trans_a, b, p.trans_b, c, p.alpha, p.beta);
  }
#endif
  for (const Product* q : group) gemm(q->a, q->trans_a, q->b, q->trans_b, q->c, q->alpha, q->beta);
}

}  // namespace

struct GemmBatch::Queue {
  struct After {
    Span reads;
    std::function<void()> fn;
  };
  std::vector<Product> products;
  std::vector<After> after;

  // Whether a queued product writes memory of s.
  bool writes(const Span& s) const {
    for (const Product& q : products)
      if (s.overlaps(span_of(q.c))) return true;
    return false;
  }

  // Whether writing `written` and reading `read` now could change what a queued product
  // reads or writes, or see what it has not written yet.
  bool conflicts(const Span& written, const std::vector<Span>& read) const {
    for (const Product& q : products)
      if (written.overlaps(span_of(q.a)) || written.overlaps(span_of(q.b))) return true;
    if (writes(written)) return true;
    for (const Span& r : read)
      if (writes(r)) return true;
    return false;
  }

  void run() {
    std::vector<Product> queued = std::exchange(products, {});
    std::vector<After> callbacks = std::exchange(after, {});
    // Groups in order of first appearance; products of a group never overlap (conflicts).
    std::vector<std::vector<const Product*>> groups;
    for (const Product& p : queued) {
      auto g = groups.begin();
      while (g != groups.end() && !same_problem(*g->front(), p)) ++g;
      if (g == groups.end())
        groups.push_back({&p});
      else
        g->push_back(&p);
    }
    // A callback runs after the last group that writes what it reads: the gradient norm
    // of one group's buffers then overlaps the next group's products.
    std::vector<size_t> last(callbacks.size(), 0);
    for (size_t i = 0; i < callbacks.size(); ++i)
      for (size_t g = 0; g < groups.size(); ++g)
        for (const Product* p : groups[g])
          if (callbacks[i].reads.overlaps(span_of(p->c))) last[i] = g;
    for (size_t g = 0; g < groups.size(); ++g) {
      run_group(groups[g]);
      for (size_t i = 0; i < callbacks.size(); ++i)
        if (last[i] == g) callbacks[i].fn();
    }
    if (groups.empty())
      for (After& a : callbacks) a.fn();
  }
};

namespace {
thread_local GemmBatch::Queue* t_open = nullptr;
}  // namespace

GemmBatch::GemmBatch(bool open) {
  if (!open) return;
  queue_ = std::make_unique<Queue>();
  previous_ = std::exchange(t_open, queue_.get());
}

GemmBatch::~GemmBatch() {
  if (queue_) t_open = previous_;
}

void GemmBatch::flush() {
  if (!queue_) return;
  // A callback may queue more (the batch is still open while they run): until none is left.
  while (!queue_->products.empty() || !queue_->after.empty()) queue_->run();
}

void gemm_batchable(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                    double alpha, double beta) {
  if (!t_open) return gemm(a, trans_a, b, trans_b, c, alpha, beta);
  detail::check_gemm(a, trans_a, b, trans_b, c, Tensor(), Tensor());
  if (t_open->conflicts(span_of(c), {span_of(a), span_of(b), span_of(c)})) t_open->run();
  if (fills_the_gpu(c)) return gemm(a, trans_a, b, trans_b, c, alpha, beta);
  t_open->products.push_back({a, b, c, trans_a, trans_b, alpha, beta});
}

void gemm_batch_sync(const Tensor& t) {
  if (t_open && t.defined() && t_open->conflicts(span_of(t), {span_of(t)})) t_open->run();
}

void after_gemm_batch(const Tensor& reads, std::function<void()> fn) {
  const Span span = reads.defined() ? span_of(reads) : Span{0, 0};
  if (t_open && t_open->writes(span))
    t_open->after.push_back({span, std::move(fn)});
  else
    fn();
}

}  // namespace fg::ops
