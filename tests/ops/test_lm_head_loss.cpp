// The chunked LM head + loss equals the unfused linear + cross-entropy, on the
// CPU for any chunking (a chunk of only ignored rows included) and on the GPU
// against the CPU; on the GPU it also runs inside CUDA stream capture, which
// proves it never syncs with the host.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "ops/cross_entropy/cross_entropy.h"
#include "ops/gemm/gemm.h"
#include "ops/lm_head_loss/lm_head_loss.h"
#include "test_util.h"

#ifdef FG_CUDA
#include "core/cuda_utils.h"
#endif

using namespace fg;

namespace {
struct Problem {
  Tensor y, w, targets;
};
// Every fifth row ignored, unless targets are given.
Problem make(int64_t n, int64_t d, int64_t v, DType dtype, Device device,
             std::vector<int32_t> t = {}) {
  Generator g(8);
  if (t.empty())
    for (int64_t i = 0; i < n; ++i)
      t.push_back(i % 5 == 2 ? -1 : static_cast<int32_t>((i * 7) % v));
  return {Tensor::randn({n, d}, g, dtype).to(device),
          Tensor::randn({v, d}, g, dtype, Device::cpu(), 0, 0.3).to(device),
          Tensor::from_ints(t, {n}, device)};
}

// Rows [lo, hi) ignored, the others aimed at (i * 7) % v.
std::vector<int32_t> ignoring(int64_t n, int64_t v, int64_t lo, int64_t hi) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i)
    t.push_back(i >= lo && i < hi ? -1 : static_cast<int32_t>((i * 7) % v));
  return t;
}

// The GPU tests' vocabulary: at least detail::kLossInEpilogueMinVocab, so that bf16 on
// Hopper takes the path with the loss in the product's epilogue.
constexpr int64_t kGpuVocab = 4099;
static_assert(kGpuVocab >= ops::detail::kLossInEpilogueMinVocab);

// Same loss, dy and dweight.
void expect_same(const ops::LMHeadLossOut& got, const ops::LMHeadLossOut& want, double tol,
                 const std::string& what) {
  EXPECT_NEAR(got.loss.item(), want.loss.item(), tol * std::max(1.0, want.loss.item())) << what;
  EXPECT_EQ(got.count.item(), want.count.item()) << what;
  EXPECT_TRUE(close_rel(got.dy, want.dy, tol)) << what << ": dy";
  EXPECT_TRUE(close_rel(got.dweight, want.dweight, tol)) << what << ": dweight";
}
}  // namespace

TEST(LMHeadLoss, EqualsLinearPlusCrossEntropyForAnyChunking) {
  Problem p = make(37, 11, 23, DType::F64, Device::cpu());
  Tensor logits = ops::matmul(p.y, false, p.w, true);
  ops::CrossEntropyOut ce = ops::cross_entropy_forward(logits, p.targets);
  Tensor one = Tensor::ones({}, DType::F64);
  Tensor dlogits = ops::cross_entropy_backward(one, logits, p.targets, ce.lse, ce.count);
  Tensor dy = ops::matmul(dlogits, false, p.w, false), dw = ops::matmul(dlogits, true, p.y, false);
  for (int64_t chunk : {1, 5, 36, 37, 0}) {
    ops::LMHeadLossOut r = ops::lm_head_loss(p.y, p.w, p.targets, true, chunk);
    EXPECT_NEAR(r.loss.item(), ce.loss.item(), 1e-12) << chunk;
    EXPECT_EQ(r.count.item(), ce.count.item());
    EXPECT_LE(relative_error(r.dy, dy), 1e-12) << chunk;
    EXPECT_LE(relative_error(r.dweight, dw), 1e-12) << chunk;
    ops::LMHeadLossOut no_grads = ops::lm_head_loss(p.y, p.w, p.targets, false, chunk);
    EXPECT_EQ(no_grads.loss.item(), r.loss.item()) << chunk;
    EXPECT_FALSE(no_grads.dy.defined());
  }
}

TEST(LMHeadLoss, DefaultChunksAreEvenAndNeverTheWholeBatch) {
  // The default splits 14 rows into two chunks of 7 (never one of 14); the
  // result is the same as any other chunking.
  Problem p = make(14, 5, 9, DType::F64, Device::cpu(), ignoring(14, 9, 4, 8));
  ops::LMHeadLossOut by_default = ops::lm_head_loss(p.y, p.w, p.targets, true, 0);
  expect_same(by_default, ops::lm_head_loss(p.y, p.w, p.targets, true, 7), 0.0, "chunks of 7");
}

TEST(LMHeadLoss, WholeIgnoredChunkEqualsUnchunked) {
  // Chunks of 4 rows; rows 4-7, the second chunk, are all ignored.
  Problem p = make(14, 5, 9, DType::F64, Device::cpu(), ignoring(14, 9, 4, 8));
  ops::LMHeadLossOut whole = ops::lm_head_loss(p.y, p.w, p.targets, true, 14);
  ops::LMHeadLossOut chunked = ops::lm_head_loss(p.y, p.w, p.targets, true, 4);
  EXPECT_EQ(whole.count.item(), 10);
  EXPECT_GT(whole.loss.item(), 0.0);
  expect_same(chunked, whole, 1e-12, "chunks of 4");
  EXPECT_EQ(max_abs_diff(chunked.dy.slice(0, 4, 8), Tensor::zeros({4, 5})), 0.0);
}

TEST(LMHeadLoss, AllIgnoredGivesZeroLossAndGrads) {
  Problem p = make(10, 4, 7, DType::F32, Device::cpu(), std::vector<int32_t>(10, -1));
  for (int64_t chunk : {3, 0}) {
    ops::LMHeadLossOut r = ops::lm_head_loss(p.y, p.w, p.targets, true, chunk);
    EXPECT_EQ(r.count.item(), 0);
    EXPECT_EQ(r.loss.item(), 0.0);
    EXPECT_EQ(max_abs_diff(r.dy, Tensor::zeros({10, 4})), 0.0) << chunk;
    EXPECT_EQ(max_abs_diff(r.dweight, Tensor::zeros({7, 4})), 0.0) << chunk;
  }
}

TEST(LMHeadLoss, NoRowsGiveZeroGradients) {
  // No chunk runs, so no product writes dW: it must still come back as zeros.
  Problem p = make(0, 4, 7, DType::F32, Device::cpu(), {});
  ops::LMHeadLossOut r = ops::lm_head_loss(p.y, p.w, p.targets, true, 0);
  EXPECT_EQ(r.loss.item(), 0.0);
  EXPECT_EQ(r.dy.shape(), (fg::Shape{0, 4}));
  EXPECT_EQ(max_abs_diff(r.dweight, Tensor::zeros({7, 4})), 0.0);
}

TEST(LMHeadLoss, ErrorsNameTheShapes) {
  Problem p = make(6, 4, 9, DType::F32, Device::cpu());
  EXPECT_FG_ERROR(ops::lm_head_loss(p.y, Tensor::zeros({9, 5}), p.targets, false),
                  "lm_head_loss: y is (6, 4) but weight is (9, 5)");
  EXPECT_FG_ERROR(ops::lm_head_loss(p.y, p.w, Tensor::from_ints({1, 2}, {2}), false),
                  "lm_head_loss: y is (6, 4) but targets is (2,)");
}

TEST(LMHeadLossCuda, MatchesCpu) {
  FG_REQUIRE_GPU();
  for (DType dt : {DType::F32, DType::BF16}) {
    Problem cpu = make(301, 64, kGpuVocab, DType::F32, Device::cpu());
    Problem gpu{cpu.y.to(Device::cuda(), dt), cpu.w.to(Device::cuda(), dt),
                cpu.targets.to(Device::cuda())};
    ops::LMHeadLossOut c = ops::lm_head_loss(cpu.y, cpu.w, cpu.targets, true, 0);
    ops::LMHeadLossOut g = ops::lm_head_loss(gpu.y, gpu.w, gpu.targets, true, 97);
    EXPECT_EQ(g.count.device(), Device::cuda());
    EXPECT_EQ(g.loss.device(), Device::cuda());
    double tol = dt == DType::BF16 ? 1e-2 : 1e-5;
    EXPECT_NEAR(g.loss.item(), c.loss.item(), tol * c.loss.item());
    EXPECT_EQ(g.count.item(), c.count.item());
    EXPECT_TRUE(close_rel(g.dy, c.dy, tol));
    EXPECT_TRUE(close_rel(g.dweight, c.dweight, tol));
  }
}

TEST(LMHeadLossCuda, IgnoredChunksMatchCpu) {
  FG_REQUIRE_GPU();
  // Chunks of 97 rows: the second is all ignored; then every row ignored.
  Problem some =
      make(301, 64, kGpuVocab, DType::F32, Device::cpu(), ignoring(301, kGpuVocab, 97, 194));
  Problem all =
      make(301, 64, kGpuVocab, DType::F32, Device::cpu(), ignoring(301, kGpuVocab, 0, 301));
  for (DType dt : {DType::F32, DType::BF16})  // bf16 on Hopper: the loss in the epilogue
    for (const Problem& p : {some, all}) {
      Problem gpu{p.y.to(Device::cuda(), dt), p.w.to(Device::cuda(), dt),
                  p.targets.to(Device::cuda())};
      // The reference on the inputs the GPU sees.
      Problem cpu{gpu.y.to(Device::cpu(), DType::F32), gpu.w.to(Device::cpu(), DType::F32),
                  p.targets};
      ops::LMHeadLossOut c = ops::lm_head_loss(cpu.y, cpu.w, cpu.targets, true, 0);
      ops::LMHeadLossOut g = ops::lm_head_loss(gpu.y, gpu.w, gpu.targets, true, 97);
      if (c.count.item() == 0) {
        EXPECT_EQ(g.count.item(), 0);
        EXPECT_EQ(g.loss.item(), 0.0);
        EXPECT_EQ(max_abs_diff(g.dy, Tensor::zeros({301, 64})), 0.0);
        EXPECT_EQ(max_abs_diff(g.dweight, Tensor::zeros({kGpuVocab, 64})), 0.0);
        continue;
      }
      expect_same(g, c, dt == DType::BF16 ? 1e-2 : 1e-5, "chunks of 97, the second ignored");
      EXPECT_EQ(max_abs_diff(g.dy.slice(0, 97, 194), Tensor::zeros({97, 64})), 0.0);
    }
}

TEST(LMHeadLossCuda, RowsOutsideTheShiftWindowMatchCpu) {
  FG_REQUIRE_GPU();
  // bf16 on Hopper shifts each row's exponentials by the target's logit, made before the
  // product (lm_head_loss_cuda.cu). Every other row scaled by 40 puts its largest logits far
  // above its target's, where the exponentials overflow: those rows must be recomputed
  // exactly, beside rows that take the product's sums.
  Problem p = make(301, 64, kGpuVocab, DType::F32, Device::cpu());
  Tensor scaled = p.y.clone();
  for (int64_t i = 1; i < 301; i += 2)
    for (int64_t k = 0; k < 64; ++k) scaled.data<float>()[i * 64 + k] *= 40.f;
  Problem gpu{scaled.to(Device::cuda(), DType::BF16), p.w.to(Device::cuda(), DType::BF16),
              p.targets.to(Device::cuda())};
  Problem cpu{gpu.y.to(Device::cpu(), DType::F32), gpu.w.to(Device::cpu(), DType::F32), p.targets};
  ops::LMHeadLossOut c = ops::lm_head_loss(cpu.y, cpu.w, cpu.targets, true, 0);
  for (bool grads : {true, false}) {
    ops::LMHeadLossOut g = ops::lm_head_loss(gpu.y, gpu.w, gpu.targets, grads, 97);
    ASSERT_TRUE(std::isfinite(g.loss.item()));
    EXPECT_NEAR(g.loss.item(), c.loss.item(), 1e-2 * c.loss.item()) << "grads " << grads;
    if (!grads) continue;
    EXPECT_TRUE(close_rel(g.dy, c.dy, 1e-2));
    EXPECT_TRUE(close_rel(g.dweight, c.dweight, 1e-2));
  }
}

#ifdef FG_CUDA  // drives CUDA graph capture directly
namespace {
// A captured graph and its executable, destroyed together.
struct CapturedGraph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CapturedGraph() = default;
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  ~CapturedGraph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
  }
};

// Captures what f launches on fusegpt's stream and instantiates it. A host sync
// or a copy to or from host memory inside f fails the capture; returns that
// error (empty on success). The capture is ended on every path, so a failure
// leaves the stream usable for the tests that follow.
template <class F>
std::string capture(CapturedGraph& g, F&& f) {
  cudaStream_t stream = cuda::stream();
  FG_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  std::string error;
  try {
    f();
  } catch (const Error& e) {
    error = e.what();
  }
  cudaError_t end = cudaStreamEndCapture(stream, &g.graph);
  cudaGetLastError();  // a failed capture leaves its error behind
  if (!error.empty()) return error;
  if (end != cudaSuccess) return std::string("cudaStreamEndCapture: ") + cudaGetErrorString(end);
  cudaError_t inst = cudaGraphInstantiateWithFlags(&g.exec, g.graph, 0);
  if (inst != cudaSuccess) return std::string("cudaGraphInstantiate: ") + cudaGetErrorString(inst);
  return "";
}

// Captures lm_head_loss with dt inputs, then checks the graph's launches against eager calls.
void captured_run_matches_eager(DType dt) {
  const int64_t n = 301, d = 64, v = kGpuVocab, chunk = 97;
  const Device gpu = Device::cuda();
  // The second chunk is all ignored.
  Problem p = make(n, d, v, DType::F32, Device::cpu(), ignoring(n, v, chunk, 2 * chunk));
  p = {p.y.to(gpu, dt), p.w.to(gpu, dt), p.targets.to(gpu)};
  // Eager first: it also sets up what is made once (cuBLASLt handle, workspace, plans).
  ops::LMHeadLossOut eager = ops::lm_head_loss(p.y, p.w, p.targets, true, chunk);

  // The graph's results land in tensors allocated before the capture; every
  // tensor made inside it is freed inside it (graph-owned memory).
  ops::LMHeadLossOut out{Tensor::empty({}, DType::F32, gpu), Tensor::empty({n, d}, dt, gpu),
                         Tensor::empty({v, d}, dt, gpu), Tensor::empty({}, DType::I32, gpu)};
  CapturedGraph graph;
  std::string error = capture(graph, [&] {
    ops::LMHeadLossOut r = ops::lm_head_loss(p.y, p.w, p.targets, true, chunk);
    out.loss.copy_(r.loss);
    out.dy.copy_(r.dy);
    out.dweight.copy_(r.dweight);
    out.count.copy_(r.count);
  });
  ASSERT_EQ(error, "") << "lm_head_loss cannot be captured: it syncs with the host";

  FG_CUDA_CHECK(cudaGraphLaunch(graph.exec, cuda::stream()));
  expect_same(out, eager, 1e-6, std::string("captured, ") + dtype_name(dt));

  // The graph reads the targets and the count on the device each launch: new
  // targets (another count) give the new eager result, not the captured one.
  p.targets.copy_(Tensor::from_ints(ignoring(n, v, 0, 150), {n}));
  ops::LMHeadLossOut eager2 = ops::lm_head_loss(p.y, p.w, p.targets, true, chunk);
  ASSERT_NE(eager2.count.item(), eager.count.item());
  FG_CUDA_CHECK(cudaGraphLaunch(graph.exec, cuda::stream()));
  expect_same(out, eager2, 1e-6,
              std::string("captured, replayed on new targets, ") + dtype_name(dt));
}
}  // namespace

TEST(LMHeadLossCuda, RunsInsideStreamCapture) {
  FG_REQUIRE_GPU();
  for (DType dt : {DType::F32, DType::BF16}) captured_run_matches_eager(dt);
}
#endif
