// RoPE: the public entries (checks, device dispatch) and the CPU reference of the
// segment kernel. Angles are computed in the tensor's dtype (f32 exactly as the GPU
// does, f64 in double) from the same double-precision inverse frequencies.
#include <cmath>

#include "ops/rope/rope.h"

namespace fg::ops {

namespace detail {

void check_positions(const char* op, const Tensor& positions, int64_t B, int64_t T, Device device) {
  check_dtype(op, "positions", positions, DType::I32);
  FG_CHECK(positions.shape() == Shape{T} || positions.shape() == (Shape{B, T}), op,
           ": positions is ", positions.shape_str(), " but expected (", T, ",) or (", B, ", ", T,
           ")");
  FG_CHECK(positions.device() == device, op, ": positions is on ", positions.device().str(),
           " but the activations are on ", device.str());
}

void check_rope_table(const char* op, const Tensor& table, const Tensor& positions,
                      int64_t rotary_dim) {
  if (!table.defined()) return;
  FG_CHECK(positions.is_cuda(), op, ": a rope_table was given for positions on ",
           positions.device().str(), " (the CPU rotates from the positions)");
  check_dtype(op, "rope_table", table, DType::F32);
  FG_CHECK(table.shape() == (Shape{positions.numel(), rotary_dim}) && table.is_contiguous(), op,
           ": rope_table is ", table.shape_str(), " but expected contiguous (", positions.numel(),
           ", ", rotary_dim, ") for positions ", positions.shape_str(), " and rotary_dim ",
           rotary_dim);
  FG_CHECK(table.device() == positions.device(), op, ": rope_table is on ", table.device().str(),
           " but positions are on ", positions.device().str());
}

namespace {

// (B, T, nh, hd) with the last two dimensions packed: what a segment kernel can walk.
void check_segment_layout(const char* what, const Tensor& t, const Tensor& first) {
  FG_CHECK(t.dim() == 4 && t.size(0) == first.size(0) && t.size(1) == first.size(1) &&
               t.size(3) == first.size(3),
           "rope segment ", what, " is ", t.shape_str(), " but the first segment is ",
           first.shape_str());
  FG_CHECK(
      (t.strides()[3] == 1 || t.size(3) == 1) && (t.strides()[2] == t.size(3) || t.size(2) == 1),
      "rope segment ", what, " ", t.shape_str(), " needs packed heads (strides (.., .., hd, 1))");
}

template <class T>
void rope_segments_typed(const std::vector<RopeSegment>& segments, const Tensor& positions,
                         int64_t rotary_dim, double theta, bool inverse, const RopeExtras& extras) {
  const Tensor& first = segments[0].in;
  const int64_t B = first.size(0), T_len = first.size(1), hd = first.size(3), half = rotary_dim / 2;
  const int32_t* pos = positions.data<int32_t>();
  const bool per_batch = positions.dim() == 2;
  const double log2_theta = std::log2(theta);
  std::vector<double> sums(extras.column_sums.defined() ? extras.column_sums.numel() : 0, 0.0);
  std::vector<T> inv_freq(half), cos_t(half), sin_t(half), rotated(hd);
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = static_cast<T>(rope_inv_freq(i, rotary_dim, log2_theta));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T_len; ++t) {
      const T p = static_cast<T>(pos[per_batch ? b * T_len + t : t]);
      for (int64_t i = 0; i < half; ++i) {
        const T angle = p * inv_freq[i];
        cos_t[i] = std::cos(angle);
        sin_t[i] = inverse ? -std::sin(angle) : std::sin(angle);
      }
      int64_t col = 0;  // the segment's first column in column_sums
      for (const RopeSegment& s : segments) {
        const T* in = s.in.data<T>() + b * s.in.strides()[0] + t * s.in.strides()[1];
        T* out = s.out.data<T>() + b * s.out.strides()[0] + t * s.out.strides()[1];
        for (int64_t head = 0; head < s.in.size(2); ++head, in += hd, out += hd, col += hd) {
          int64_t c = 0;
          if (s.rotate) {
            for (; c < half; ++c) {
              const T x1 = in[c], x2 = in[c + half];
              rotated[c] = x1 * cos_t[c] - x2 * sin_t[c];
              rotated[c + half] = x2 * cos_t[c] + x1 * sin_t[c];
            }
            c = rotary_dim;
          }
          for (; c < hd; ++c) rotated[c] = in[c];  // dims >= rotary_dim (all of them for v)
          for (c = 0; c < hd; ++c) {
            if (!sums.empty()) sums[col + c] += rotated[c];
            out[c] = rotated[c];
          }
        }
      }
    }
  }
  if (!sums.empty()) {
    T* out = extras.column_sums.data<T>();
    for (size_t c = 0; c < sums.size(); ++c) out[c] = static_cast<T>(sums[c]);
  }
}

}  // namespace

void rope_segments(const std::vector<RopeSegment>& segments, const Tensor& positions,
                   int64_t rotary_dim, double theta, bool inverse, const RopeExtras& extras) {
  FG_CHECK(!segments.empty() && segments.size() <= static_cast<size_t>(kMaxRopeSegments),
           "rope: ", segments.size(), " segments, expected 1 to ", kMaxRopeSegments);
  const Tensor& first = segments[0].in;
  for (const RopeSegment& s : segments) {
    check_segment_layout("input", s.in, first);
    check_segment_layout("output", s.out, first);
    FG_CHECK(s.in.shape() == s.out.shape() && s.in.dtype() == s.out.dtype() &&
                 s.in.dtype() == first.dtype() && s.in.device() == s.out.device(),
             "rope: segment input ", s.in.describe(), " and output ", s.out.describe(),
             " differ (first segment ", first.describe(), ")");
  }
  const int64_t rows = first.size(0) * first.size(1);
  if (extras.column_sums.defined()) {
    int64_t columns = 0;
    for (const RopeSegment& s : segments) columns += s.in.size(2) * s.in.size(3);
    FG_CHECK(extras.column_sums.shape() == Shape{columns} &&
                 extras.column_sums.dtype() == first.dtype() &&
                 extras.column_sums.is_contiguous() &&
                 extras.column_sums.device() == first.device(),
             "rope: column_sums is ", extras.column_sums.describe(), " but expected (", columns,
             ",) ", dtype_name(first.dtype()), " on ", first.device().str());
    if (rows == 0) return extras.column_sums.zero_();
  }
  if (first.numel() == 0) return;
#ifdef FG_CUDA
  if (first.is_cuda())
    return rope_segments_cuda(segments, positions, rotary_dim, theta, inverse, extras);
#endif
  rope_segments_cpu(segments, positions, rotary_dim, theta, inverse, extras);
}

void rope_segments_cpu(const std::vector<RopeSegment>& segments, const Tensor& positions,
                       int64_t rotary_dim, double theta, bool inverse, const RopeExtras& extras) {
  dispatch_float("rope", segments[0].in.dtype(), [&]<class T>() {
    rope_segments_typed<T>(segments, positions, rotary_dim, theta, inverse, extras);
  });
}

}  // namespace detail

void check_rope_args(const char* op, const Tensor& x, const Tensor& positions, int64_t rotary_dim) {
  check_defined(op, "x", x);
  check_defined(op, "positions", positions);
  FG_CHECK(x.dim() == 4, op, ": x is ", x.shape_str(), " but expected (B, T, heads, head_dim)");
  FG_CHECK(x.dtype() != DType::I32, op, ": x is i32 but must be a float tensor");
  detail::check_positions(op, positions, x.size(0), x.size(1), x.device());
  FG_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= x.size(3), op, ": rotary_dim is ",
           rotary_dim, " but must be even, positive and <= head_dim ", x.size(3));
}

namespace {
Tensor rope_apply(const char* op, const Tensor& x, const Tensor& positions, int64_t rotary_dim,
                  double theta, bool inverse) {
  check_rope_args(op, x, positions, rotary_dim);
  FG_CHECK(theta > 0, op, ": theta is ", theta, " but must be > 0");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  detail::rope_segments({{x.contiguous(), out, true}}, positions.contiguous(), rotary_dim, theta,
                        inverse);
  return out;
}
}  // namespace

Tensor rope_forward(const Tensor& x, const Tensor& positions, int64_t rotary_dim, double theta) {
  return rope_apply("rope", x, positions, rotary_dim, theta, false);
}

Tensor rope_backward(const Tensor& dy, const Tensor& positions, int64_t rotary_dim, double theta) {
  return rope_apply("rope_backward", dy, positions, rotary_dim, theta, true);
}

Tensor rope_table(const Tensor& positions, int64_t rotary_dim, double theta) {
  const char* op = "rope_table";
  check_defined(op, "positions", positions);
  check_dtype(op, "positions", positions, DType::I32);
  FG_CHECK(positions.dim() == 1 || positions.dim() == 2, op, ": positions is ",
           positions.shape_str(), " but expected (T) or (B, T)");
  FG_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0, op, ": rotary_dim is ", rotary_dim,
           " but must be even and positive");
  FG_CHECK(theta > 0, op, ": theta is ", theta, " but must be > 0");
#ifdef FG_CUDA
  if (positions.is_cuda())
    return detail::rope_table_cuda(positions.contiguous(), rotary_dim, theta);
#endif
  return Tensor();
}

}  // namespace fg::ops
