// CUPTI activity tracing for bench_train --profile. CUPTI hands filled buffers
// to buffer_completed (possibly on its own thread); the records are kept as
// (name id, start, end) and summed in finish(). FG_CUPTI is defined by
// bench/CMakeLists.txt when the build has CUDA and CUPTI.
#include "bench/common/kernel_profile.h"

#include <regex>

#include "core/error.h"

#ifdef FG_CUPTI
#include <cuda_runtime.h>
#include <cupti.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <unordered_map>

#include "core/cuda_utils.h"
#endif

namespace fg::bench {

std::string short_kernel_name(const std::string& demangled, size_t max_chars) {
  std::string n = demangled;
  if (n.rfind("void ", 0) == 0) n.erase(0, 5);  // kernels all return void
  if (!n.empty() && n.back() == ')') {          // drop the argument list
    int depth = 0;
    for (size_t i = n.size(); i-- > 0;) {
      if (n[i] == ')') {
        ++depth;
      } else if (n[i] == '(' && --depth == 0) {
        n.resize(i);
        break;
      }
    }
  }
  // Namespaces and class scopes ("fg::ops::", "(anonymous namespace)::") say
  // little in a table of kernels and push the kernel's own name out of it.
  n = std::regex_replace(n, std::regex(R"((\(anonymous namespace\)|\w+)::)"), "");
  if (n.size() > max_chars && max_chars > 12) {
    const size_t tail = (max_chars - 3) / 3;
    n = n.substr(0, max_chars - 3 - tail) + "..." + n.substr(n.size() - tail);
  }
  return n;
}

#ifdef FG_CUPTI

namespace {

constexpr size_t kBufferBytes = 16 << 20;  // ~60k kernel records per buffer
constexpr size_t kBufferAlign = 8;         // CUPTI needs 8-byte aligned buffers
constexpr CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
                                         CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET};

struct Record {
  int name;  // index into State::names
  uint64_t start, end;
};

struct State {
  std::mutex mutex;
  std::unordered_map<std::string, int> ids;  // raw (mangled) name -> index
  std::vector<std::string> names;
  std::vector<Record> records;
  uint64_t dropped = 0;
  bool registered = false;
};

State& state() {
  static State s;
  return s;
}

std::string cupti_error(const char* what, CUptiResult r) {
  const char* s = "unknown error";
  cuptiGetResultString(r, &s);
  return str_cat(what, ": ", s);
}

int name_id(State& s, const std::string& raw) {
  auto [it, added] = s.ids.try_emplace(raw, static_cast<int>(s.names.size()));
  if (added) s.names.push_back(raw);
  return it->second;
}

const char* memcpy_name(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD:
      return "[memcpy HtoD]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH:
      return "[memcpy DtoH]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD:
      return "[memcpy DtoD]";
    default:
      return "[memcpy other]";
  }
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = kBufferBytes;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(kBufferAlign, kBufferBytes));
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t* buffer, size_t,
                               size_t valid) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  CUpti_Activity* rec = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    switch (rec->kind) {
      case CUPTI_ACTIVITY_KIND_KERNEL:
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
        s.records.push_back({name_id(s, k->name ? k->name : "?"), k->start, k->end});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
        s.records.push_back({name_id(s, memcpy_name(m->copyKind)), m->start, m->end});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(rec);
        // By size: which zero fills a step makes shows in the table.
        const std::string name = "[memset " + std::to_string(m->bytes) + " B]";
        s.records.push_back({name_id(s, name), m->start, m->end});
        break;
      }
      default:
        break;
    }
  }
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS)
    s.dropped += dropped;
  std::free(buffer);
}

void disable_all() {
  for (CUpti_ActivityKind k : kKinds) cuptiActivityDisable(k);
}

std::string demangle(const std::string& raw) {
  int status = 0;
  char* d = abi::__cxa_demangle(raw.c_str(), nullptr, nullptr, &status);
  if (status != 0 || d == nullptr) return raw;  // C names (cuBLASLt's) and "[memcpy ...]"
  std::string out = d;
  std::free(d);
  return out;
}

}  // namespace

KernelProfiler::KernelProfiler() {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.records.clear();
    s.dropped = 0;
  }
  if (!s.registered) {
    CUptiResult r = cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
    if (r != CUPTI_SUCCESS) FG_THROW(cupti_error("cuptiActivityRegisterCallbacks", r));
    s.registered = true;
  }
  for (CUpti_ActivityKind k : kKinds) {
    CUptiResult r = cuptiActivityEnable(k);
    if (r != CUPTI_SUCCESS) {
      disable_all();
      FG_THROW(cupti_error("cuptiActivityEnable", r));
    }
  }
  active_ = true;
}

KernelProfiler::~KernelProfiler() {
  if (!active_) return;
  disable_all();
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);  // hands back CUPTI's buffers
  std::lock_guard<std::mutex> lock(state().mutex);
  state().records.clear();
}

KernelProfile KernelProfiler::finish(double window_ms) {
  FG_CHECK(active_, "KernelProfiler::finish called twice");
  FG_CUDA_CHECK(cudaDeviceSynchronize());  // every launched kernel has its record
  disable_all();
  active_ = false;
  CUptiResult r = cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  if (r != CUPTI_SUCCESS) FG_THROW(cupti_error("cuptiActivityFlushAll", r));

  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  uint64_t last_end = 0;
  for (const Record& rec : s.records) last_end = std::max(last_end, rec.end);
  const auto window_ns = static_cast<uint64_t>(window_ms * 1e6);
  const uint64_t since_ns = last_end > window_ns ? last_end - window_ns : 0;
  std::vector<Record> recs;
  for (const Record& rec : s.records)
    if (rec.start >= since_ns && rec.end >= rec.start) recs.push_back(rec);
  s.records.clear();

  KernelProfile p;
  p.dropped = s.dropped;
  p.launches = static_cast<int64_t>(recs.size());
  // Sum by shortened name: template instances that print alike count as one kernel.
  std::unordered_map<std::string, size_t> by_name;
  std::vector<std::string> short_names(s.names.size());  // demangled once per raw name
  for (const Record& rec : recs) {
    std::string& name = short_names[rec.name];
    if (name.empty()) name = short_kernel_name(demangle(s.names[rec.name]));
    auto [it, added] = by_name.try_emplace(name, p.kernels.size());
    if (added) p.kernels.push_back({name, 0, 0});
    KernelStat& k = p.kernels[it->second];
    const double ms = static_cast<double>(rec.end - rec.start) * 1e-6;
    k.calls += 1;
    k.total_ms += ms;
    p.kernel_ms += ms;
  }
  std::sort(p.kernels.begin(), p.kernels.end(),
            [](const KernelStat& a, const KernelStat& b) { return a.total_ms > b.total_ms; });

  // Busy time: the union of the intervals (kernels on several streams may overlap); the
  // holes in it are the idle gaps, named by the record that ended last before each and
  // the one that starts it.
  std::sort(recs.begin(), recs.end(),
            [](const Record& a, const Record& b) { return a.start < b.start; });
  uint64_t busy = 0, cur_start = 0, cur_end = 0;
  const Record* last = nullptr;  // the record that ends at cur_end
  std::unordered_map<std::string, size_t> by_pair;
  for (const Record& rec : recs) {
    if (rec.start > cur_end) {
      busy += cur_end - cur_start;
      if (last) {
        const std::string& before = short_names[last->name];
        const std::string& after = short_names[rec.name];
        auto [it, added] = by_pair.try_emplace(before + '\n' + after, p.gaps.size());
        if (added) p.gaps.push_back({before, after, 0, 0});
        p.gaps[it->second].count += 1;
        p.gaps[it->second].total_ms += static_cast<double>(rec.start - cur_end) * 1e-6;
      }
      cur_start = rec.start;
      cur_end = rec.end;
      last = &rec;
    } else if (rec.end > cur_end) {
      cur_end = rec.end;
      last = &rec;
    }
  }
  busy += cur_end - cur_start;
  p.busy_ms = static_cast<double>(busy) * 1e-6;
  std::sort(p.gaps.begin(), p.gaps.end(),
            [](const GapStat& a, const GapStat& b) { return a.total_ms > b.total_ms; });
  return p;
}

#else  // no CUPTI in this build

KernelProfiler::KernelProfiler() {
  FG_THROW("this build has no CUPTI (FG_CUDA=OFF, or the CUDA toolkit has no libcupti)");
}
KernelProfiler::~KernelProfiler() = default;
KernelProfile KernelProfiler::finish(double) {
  return {};
}

#endif

}  // namespace fg::bench
