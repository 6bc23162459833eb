// gemm on the GPU through cuBLASLt: row-major C = alpha op(A) op(B) + beta C
// (+ bias), computed as the column-major C^T = op(B)^T op(A)^T. One handle and
// one workspace per device; a plan (descriptors, layouts, chosen algorithm) per
// problem, built on first use and cached.
#include <cublasLt.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string_view>
#include <utility>
#include <vector>

#include "core/cuda_utils.h"
#include "ops/gemm/gemm.h"

#define FG_CUBLAS_CHECK(expr)                                                                      \
  do {                                                                                             \
    cublasStatus_t fg_status_ = (expr);                                                            \
    if (fg_status_ != CUBLAS_STATUS_SUCCESS)                                                       \
      ::fg::throw_error(__FILE__, __LINE__, #expr,                                                 \
                        ::fg::str_cat("cuBLASLt error: ", cublasLtGetStatusName(fg_status_), " (", \
                                      cublasLtGetStatusString(fg_status_), ")"));                  \
  } while (0)

namespace fg::ops::detail {
namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLASLt's split-K and stream-K scratch
constexpr uint32_t kMaxAlignment = 256;        // the most any cuBLASLt kernel asks for
constexpr int kBlock = 256;
constexpr int kCandidates = 8;        // heuristic algorithms timed per problem when tuning
constexpr int kTuneRuns = 10;         // runs timed per candidate
constexpr float kTuneMargin = 0.97f;  // a later candidate must be 3 % faster to win
constexpr int kMaxBatch = 128;  // products per batched call (their pointers: a kernel argument)

// Owns one cuBLASLt object; destroyed with its matching destroy function.
template <class T, cublasStatus_t (*Destroy)(T)>
class LtObject {
 public:
  LtObject() = default;
  explicit LtObject(T h) : h_(h) {}
  ~LtObject() {
    if (h_) Destroy(h_);  // status ignored: destructors never throw
  }
  LtObject(LtObject&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  LtObject& operator=(LtObject&& o) noexcept {
    std::swap(h_, o.h_);
    return *this;
  }
  LtObject(const LtObject&) = delete;
  LtObject& operator=(const LtObject&) = delete;
  T get() const { return h_; }

 private:
  T h_ = nullptr;
};

using LtHandle = LtObject<cublasLtHandle_t, cublasLtDestroy>;
using MatmulDesc = LtObject<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using MatrixLayout = LtObject<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using MatmulPreference = LtObject<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

// Device memory from cudaMalloc, freed once (the workspace lives as long as the process).
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) { FG_CUDA_CHECK(cudaMalloc(&ptr_, bytes)); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

struct DeviceContext {
  LtHandle handle;
  DeviceBuffer workspace{kWorkspaceBytes};
  // A batched call's operand addresses (cuBLASLt's A, B and C/D arrays, kMaxBatch apart),
  // written by a kernel before each call: stream order keeps one call's from the next's.
  DeviceBuffer pointers{3 * kMaxBatch * sizeof(void*)};
};

// Everything that decides the algorithm. Pointer alignments are part of it:
// cuBLASLt picks kernels that may need 256-byte aligned operands, and views
// (slices of a fused projection, say) can start anywhere.
struct PlanKey {
  int device;
  DType dtype;    // of a and b
  DType c_dtype;  // dtype, or f32 for bf16 operands
  int64_t m, n, k, lda, ldb, ldc;
  bool trans_a, trans_b, bias_epilogue;
  uint32_t align_a, align_b, align_c, align_bias;  // the least over a batch's products
  int batch;  // products of a pointer-array batched call; 1: a plain call
  auto operator<=>(const PlanKey&) const = default;
};

struct Plan {
  MatmulDesc desc;
  MatrixLayout a, b, c;  // cuBLASLt's A is our B and vice versa (column-major view)
  cublasLtMatmulAlgo_t algo;
};

// One handle, workspace and plan cache per device, behind one lock: cuBLASLt
// calls only enqueue work, so holding it across a matmul costs little.
struct Registry {
  std::mutex mutex;
  std::map<int, std::unique_ptr<DeviceContext>> devices;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: outlives every static user
  return *r;
}

DeviceContext& device_context(Registry& r, int device) {
  auto it = r.devices.find(device);
  if (it != r.devices.end()) return *it->second;
  auto ctx = std::make_unique<DeviceContext>();
  cublasLtHandle_t h = nullptr;
  FG_CUBLAS_CHECK(cublasLtCreate(&h));
  ctx->handle = LtHandle(h);
  return *r.devices.emplace(device, std::move(ctx)).first->second;
}

uint32_t alignment_of(const void* p) {
  auto addr = reinterpret_cast<uintptr_t>(p);
  uint32_t a = kMaxAlignment;
  while (a > 1 && addr % a != 0) a /= 2;
  return a;
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::F64:
      return CUDA_R_64F;
    case DType::BF16:
      return CUDA_R_16BF;
    default:
      FG_THROW("gemm: dtype ", dtype_name(t), " is not supported on the GPU");
  }
}

template <class Attr, class V>
void set_desc(cublasLtMatmulDesc_t d, Attr attr, const V& value) {
  FG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, &value, sizeof(value)));
}

template <class V>
void set_pref(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr,
              const V& value) {
  FG_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p, attr, &value, sizeof(value)));
}

// batch > 1: the matrices of a pointer-array batch.
MatrixLayout make_layout(DType t, int64_t rows, int64_t cols, int64_t ld, int batch) {
  cublasLtMatrixLayout_t l = nullptr;
  FG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, cuda_type(t), static_cast<uint64_t>(rows),
                                             static_cast<uint64_t>(cols), ld));
  MatrixLayout layout(l);
  if (batch > 1) {
    const int32_t count = batch;
    const uint32_t mode = CUBLASLT_BATCH_MODE_POINTER_ARRAY;
    FG_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                     sizeof(count)));
    FG_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_MODE, &mode,
                                                     sizeof(mode)));
  }
  return layout;
}

// What a plan is timed on when tuning: the call's own operands and scalars.
struct Operands {
  const void *a, *b, *c;
  const void *alpha, *beta;
  void* workspace;
};

// Whether new plans are tuned (gemm.h: set_gemm_tuning); FG_GEMM_TUNE=1 turns it on.
std::atomic<bool>& tuning() {
  static std::atomic<bool> on = [] {
    const char* v = std::getenv("FG_GEMM_TUNE");
    return v && std::string_view(v) == "1";
  }();
  return on;
}

// A captured stream cannot be timed (and a graph must not record trial runs).
bool stream_capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  FG_CUDA_CHECK(cudaStreamIsCapturing(cuda::stream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

// The candidate that ran fastest on the call's operands, D written to scratch
// (C is read, so accumulating calls stay intact). Ties keep the earlier
// (heuristic-preferred) one; candidates that fail to launch are skipped.
cublasLtMatmulAlgo_t fastest_algo(cublasLtHandle_t handle, const Plan& plan, const PlanKey& key,
                                  const Operands& ops, const cublasLtMatmulHeuristicResult_t* cands,
                                  int count) {
  DeviceBuffer scratch(static_cast<size_t>(key.ldc * key.m) * dtype_size(key.c_dtype));
  cudaStream_t stream = cuda::stream();
  auto make_event = [] {
    cudaEvent_t e = nullptr;
    FG_CUDA_CHECK(cudaEventCreate(&e));
    return std::unique_ptr<CUevent_st, cudaError_t (*)(cudaEvent_t)>(e, cudaEventDestroy);
  };
  const auto start = make_event(), stop = make_event();
  auto launch = [&](const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(handle, plan.desc.get(), ops.alpha, ops.b, plan.a.get(), ops.a,
                          plan.b.get(), ops.beta, ops.c, plan.c.get(), scratch.get(), plan.c.get(),
                          &algo, ops.workspace, kWorkspaceBytes, stream);
  };
  int best = 0;
  float best_ms = std::numeric_limits<float>::infinity();
  for (int i = 0; i < count; ++i) {
    if (launch(cands[i].algo) != CUBLAS_STATUS_SUCCESS) continue;  // warm-up, and a check
    FG_CUDA_CHECK(cudaEventRecord(start.get(), stream));
    for (int r = 0; r < kTuneRuns; ++r) FG_CUBLAS_CHECK(launch(cands[i].algo));
    FG_CUDA_CHECK(cudaEventRecord(stop.get(), stream));
    FG_CUDA_CHECK(cudaEventSynchronize(stop.get()));
    float ms = 0;
    FG_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    if (ms < best_ms * kTuneMargin) best = i, best_ms = ms;
  }
  FG_CUDA_CHECK(cudaStreamSynchronize(stream));  // before scratch is freed
  return cands[best].algo;
}

// Builds the plan, or returns null when no algorithm supports it (the bias
// epilogue is not offered for every dtype, nor every problem as a pointer-array
// batch; the caller then adds bias itself, or runs the products one by one).
std::unique_ptr<Plan> make_plan(cublasLtHandle_t handle, const PlanKey& key, const void* bias_ptr,
                                const Operands& operands) {
  bool tune = tuning() && !stream_capturing() && key.batch == 1;
  auto plan = std::make_unique<Plan>();
  // f64 accumulates in f64; f32 and bf16 in fp32, never TF32, so f32 matches the CPU.
  bool f64 = key.dtype == DType::F64;
  cublasLtMatmulDesc_t d = nullptr;
  FG_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d, f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
                                           f64 ? CUDA_R_64F : CUDA_R_32F));
  plan->desc = MatmulDesc(d);
  // Column-major problem: D^T (n, m) = op'(B) (n, k) @ op'(A) (k, m).
  cublasOperation_t op_b = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t op_a = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_desc(d, CUBLASLT_MATMUL_DESC_TRANSA, op_b);
  set_desc(d, CUBLASLT_MATMUL_DESC_TRANSB, op_a);
  if (key.bias_epilogue) {
    set_desc(d, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    set_desc(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias_ptr);
  }
  // Stored shapes: row-major B (k, n) is column-major (n, k); (n, k) with trans_b is (k, n).
  plan->a = key.trans_b ? make_layout(key.dtype, key.k, key.n, key.ldb, key.batch)
                        : make_layout(key.dtype, key.n, key.k, key.ldb, key.batch);
  plan->b = key.trans_a ? make_layout(key.dtype, key.m, key.k, key.lda, key.batch)
                        : make_layout(key.dtype, key.k, key.m, key.lda, key.batch);
  plan->c = make_layout(key.c_dtype, key.n, key.m, key.ldc, key.batch);

  cublasLtMatmulPreference_t p = nullptr;
  FG_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&p));
  MatmulPreference pref(p);
  set_pref(p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, kWorkspaceBytes);
  set_pref(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b);
  set_pref(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a);
  set_pref(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c);
  set_pref(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c);
  cublasLtMatmulHeuristicResult_t results[kCandidates]{};
  int found = 0;
  cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle, d, plan->a.get(), plan->b.get(), plan->c.get(),
                                     plan->c.get(), p, tune ? kCandidates : 1, results, &found);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || (st == CUBLAS_STATUS_SUCCESS && found == 0)) {
    // Without the bias epilogue, or as a batch, the caller has another way.
    FG_CHECK(key.bias_epilogue || key.batch > 1, "gemm: cuBLASLt has no algorithm for ",
             dtype_name(key.dtype), " (", key.m, ", ", key.k, ") @ (", key.k, ", ", key.n, ")");
    return nullptr;
  }
  FG_CUBLAS_CHECK(st);
  plan->algo = results[0].algo;
  if (tune && found > 1) plan->algo = fastest_algo(handle, *plan, key, operands, results, found);
  return plan;
}

// The cached plan for key, built on first use; null (also cached) when the
// bias epilogue or the batch has no algorithm for it.
Plan* find_or_make_plan(Registry& r, cublasLtHandle_t handle, const PlanKey& key,
                        const void* bias_ptr, const Operands& operands) {
  auto it = r.plans.find(key);
  if (it == r.plans.end())
    it = r.plans.emplace(key, make_plan(handle, key, bias_ptr, operands)).first;
  return it->second.get();
}

// c = (beta == 0 ? 0 : beta c) + bias, on (m, n) with row stride ldc. Finishes
// what cuBLASLt did not: bias when beta != 0 or without the epilogue (then
// beta is 1 after the matmul), and the whole result when k == 0.
template <class T>
__global__ void scale_add_bias_kernel(T* c, int64_t m, int64_t n, int64_t ldc, double beta,
                                      const T* bias) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= m * n) return;
  int64_t row = i / n, col = i % n;
  T* p = c + row * ldc + col;
  if constexpr (std::is_same_v<T, bf16>) {
    float v = beta == 0.0 ? 0.f : static_cast<float>(beta) * bf16_to_float(*p);
    *p = float_to_bf16(v + (bias ? bf16_to_float(bias[col]) : 0.f));
  } else {
    T v = beta == 0.0 ? T(0) : static_cast<T>(beta) * *p;
    *p = v + (bias ? bias[col] : T(0));
  }
}

template <class T>
void launch_scale_add_bias(const Tensor& c, int64_t ldc, double beta, const Tensor& bias) {
  int64_t total = c.numel();
  if (total == 0) return;
  scale_add_bias_kernel<T><<<cuda::grid_for(total, kBlock), kBlock, 0, cuda::stream()>>>(
      c.data<T>(), c.size(0), c.size(1), ldc, beta, bias.defined() ? bias.data<T>() : nullptr);
  FG_CUDA_CHECK(cudaGetLastError());
}

void scale_add_bias(const Tensor& c, int64_t ldc, double beta, const Tensor& bias) {
  switch (c.dtype()) {
    case DType::F32:
      return launch_scale_add_bias<float>(c, ldc, beta, bias);
    case DType::F64:
      return launch_scale_add_bias<double>(c, ldc, beta, bias);
    case DType::BF16:
      return launch_scale_add_bias<bf16>(c, ldc, beta, bias);
    default:
      FG_THROW("gemm: dtype ", dtype_name(c.dtype()), " is not supported on the GPU");
  }
}

// Row stride of a row-major matrix, as cuBLASLt needs it (>= the row length);
// a single row may carry any stride.
int64_t leading_dim(const Tensor& t) {
  return t.size(0) <= 1 ? std::max<int64_t>(t.size(1), 1) : t.strides()[0];
}

// A batched call's operand addresses, passed by value (3 KB of kernel arguments), so a
// CUDA graph that captures the call replays them without host memory of its own.
struct BatchPointers {
  const void* p[3][kMaxBatch];  // cuBLASLt's A (our b), B (our a), C = D (our c)
  int count;
};

__global__ void write_batch_pointers_kernel(const BatchPointers ptrs, const void** out) {
  const int i = threadIdx.x;
  if (i >= ptrs.count) return;
  for (int m = 0; m < 3; ++m) out[m * kMaxBatch + i] = ptrs.p[m][i];
}

}  // namespace

size_t gemm_cuda_workspace_bytes() { return kWorkspaceBytes; }

void set_gemm_tuning_cuda(bool on) {
  tuning() = on;
}

void gemm_cuda(const Tensor& a_in, bool trans_a, const Tensor& b_in, bool trans_b, const Tensor& c,
               double alpha, double beta, const Tensor& bias_in, const Tensor& addend_in) {
  int64_t m = c.size(0), n = c.size(1), k = trans_a ? a_in.size(0) : a_in.size(1);
  if (m == 0 || n == 0) return;
  if (bias_in.defined())
    FG_CHECK(bias_in.dtype() == c.dtype(), "gemm: bias is ", dtype_name(bias_in.dtype()),
             " but c is ", dtype_name(c.dtype()));
  Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();  // packed (n)
  int64_t ldc = leading_dim(c);
  FG_CHECK(ldc >= n, "gemm: c ", c.shape_str(), " has row stride ", ldc,
           " (overlapping rows cannot be written)");
  // cuBLASLt reads C with D's layout: an addend laid out otherwise is copied into c first.
  Tensor addend = addend_in;
  if (addend.defined() && (k == 0 || leading_dim(addend) != ldc)) {
    c.copy_(addend);
    addend = Tensor();
  }
  if (k == 0) return scale_add_bias(c, ldc, beta, bias);  // empty product: beta c + bias
  const Tensor& c_src = addend.defined() ? addend : c;    // what beta scales
  // Overlapping rows (a stride-0 broadcast, say) are made real for cuBLASLt.
  Tensor a = leading_dim(a_in) >= a_in.size(1) ? a_in : a_in.contiguous();
  Tensor b = leading_dim(b_in) >= b_in.size(1) ? b_in : b_in.contiguous();

  PlanKey key{.device = c.device().index,
              .dtype = a.dtype(),
              .c_dtype = c.dtype(),
              .m = m,
              .n = n,
              .k = k,
              .lda = leading_dim(a),
              .ldb = leading_dim(b),
              .ldc = ldc,
              .trans_a = trans_a,
              .trans_b = trans_b,
              .bias_epilogue = bias.defined() && beta == 0.0,
              .align_a = alignment_of(a.raw_data()),
              .align_b = alignment_of(b.raw_data()),
              .align_c = std::min(alignment_of(c.raw_data()), alignment_of(c_src.raw_data())),
              .align_bias = bias.defined() ? alignment_of(bias.raw_data()) : kMaxAlignment,
              .batch = 1};
  bool bias_done = false;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    DeviceContext& ctx = device_context(r, key.device);
    double alpha64 = alpha, beta64 = beta;
    float alpha32 = static_cast<float>(alpha), beta32 = static_cast<float>(beta);
    bool f64 = c.dtype() == DType::F64;
    const void* p_alpha = f64 ? static_cast<const void*>(&alpha64) : &alpha32;
    const void* p_beta = f64 ? static_cast<const void*>(&beta64) : &beta32;
    void* workspace = ctx.workspace.get();
    Operands operands{a.raw_data(), b.raw_data(), c_src.raw_data(), p_alpha, p_beta, workspace};
    Plan* plan = find_or_make_plan(r, ctx.handle.get(), key,
                                   key.bias_epilogue ? bias.raw_data() : nullptr, operands);
    if (!plan) {  // no algorithm with the bias epilogue: plain matmul, bias added below
      key.bias_epilogue = false;
      key.align_bias = kMaxAlignment;
      plan = find_or_make_plan(r, ctx.handle.get(), key, nullptr, operands);
    }
    if (key.bias_epilogue) {  // the pointer changes per call; its alignment is in the key
      set_desc(plan->desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias.raw_data());
      bias_done = true;
    }
    // cuBLASLt's A is our B: C^T = op(B)^T op(A)^T.
    FG_CUBLAS_CHECK(cublasLtMatmul(ctx.handle.get(), plan->desc.get(), p_alpha, b.raw_data(),
                                   plan->a.get(), a.raw_data(), plan->b.get(), p_beta,
                                   c_src.raw_data(), plan->c.get(), c.raw_data(), plan->c.get(),
                                   &plan->algo, workspace, kWorkspaceBytes, cuda::stream()));
  }
  if (bias.defined() && !bias_done) scale_add_bias(c, ldc, 1.0, bias);
}

void gemm_cuda_batched(const std::vector<Tensor>& a, bool trans_a, const std::vector<Tensor>& b,
                       bool trans_b, const std::vector<Tensor>& c, double alpha, double beta) {
  const size_t count = c.size();
  const int64_t k = trans_a ? a[0].size(0) : a[0].size(1);
  // The corner cases gemm_cuda handles (empty, k = 0, overlapping rows) stay there, as do
  // f64 products (the CPU-check dtype).
  const bool batchable = k > 0 && c[0].numel() > 0 && c[0].dtype() != DType::F64 &&
                         leading_dim(a[0]) >= a[0].size(1) && leading_dim(b[0]) >= b[0].size(1) &&
                         leading_dim(c[0]) >= c[0].size(1);
  uint32_t align_a = kMaxAlignment, align_b = kMaxAlignment, align_c = kMaxAlignment;
  for (size_t i = 0; i < count; ++i) {
    align_a = std::min(align_a, alignment_of(a[i].raw_data()));
    align_b = std::min(align_b, alignment_of(b[i].raw_data()));
    align_c = std::min(align_c, alignment_of(c[i].raw_data()));
  }
  // Products [first, first + n) as one call; false when cuBLASLt has no algorithm for it.
  auto run_batched = [&](size_t first, int n) {
    PlanKey key{.device = c[0].device().index,
                .dtype = a[0].dtype(),
                .c_dtype = c[0].dtype(),
                .m = c[0].size(0),
                .n = c[0].size(1),
                .k = k,
                .lda = leading_dim(a[0]),
                .ldb = leading_dim(b[0]),
                .ldc = leading_dim(c[0]),
                .trans_a = trans_a,
                .trans_b = trans_b,
                .bias_epilogue = false,
                .align_a = align_a,
                .align_b = align_b,
                .align_c = align_c,
                .align_bias = kMaxAlignment,
                .batch = n};
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    DeviceContext& ctx = device_context(r, key.device);
    Plan* plan = find_or_make_plan(r, ctx.handle.get(), key, nullptr, Operands{});
    if (!plan) return false;
    BatchPointers ptrs{};
    ptrs.count = n;
    for (int i = 0; i < n; ++i) {
      ptrs.p[0][i] = b[first + i].raw_data();
      ptrs.p[1][i] = a[first + i].raw_data();
      ptrs.p[2][i] = c[first + i].raw_data();
    }
    auto** table = static_cast<const void**>(ctx.pointers.get());
    write_batch_pointers_kernel<<<1, kMaxBatch, 0, cuda::stream()>>>(ptrs, table);
    FG_CUDA_CHECK(cudaGetLastError());
    const float alpha32 = static_cast<float>(alpha), beta32 = static_cast<float>(beta);
    void* c_table = table + 2 * kMaxBatch;
    FG_CUBLAS_CHECK(cublasLtMatmul(ctx.handle.get(), plan->desc.get(), &alpha32, table,
                                   plan->a.get(), table + kMaxBatch, plan->b.get(), &beta32,
                                   c_table, plan->c.get(), c_table, plan->c.get(), &plan->algo,
                                   ctx.workspace.get(), kWorkspaceBytes, cuda::stream()));
    return true;
  };
  for (size_t first = 0; first < count; first += kMaxBatch) {
    const int n = static_cast<int>(std::min<size_t>(kMaxBatch, count - first));
    if (batchable && n > 1 && run_batched(first, n)) continue;
    for (size_t i = first; i < first + n; ++i)
      gemm_cuda(a[i], trans_a, b[i], trans_b, c[i], alpha, beta, Tensor(), Tensor());
  }
}

}  // namespace fg::ops::detail
