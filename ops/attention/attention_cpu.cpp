// Causal GQA attention: the checked public entries and the CPU reference. The
// reference works one (batch, head) at a time on (T, hd) strided views and
// uses ops::gemm for the three products; the (T, T) score matrix is explicit.
#include <cmath>

#include "ops/attention/attention.h"
#include "ops/gemm/gemm.h"
#include "ops/rope/rope.h"

namespace fg::ops {

namespace {

struct AttentionDims {
  int64_t batch, seq, heads, kv_heads, head_dim;
};

AttentionDims check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  check_defined(op, "q", q);
  check_defined(op, "k", k);
  check_defined(op, "v", v);
  FG_CHECK(q.dim() == 4, op, ": q must be (B, T, H, hd), got ", q.shape_str());
  FG_CHECK(k.dim() == 4 && k.size(2) > 0 && q.size(0) == k.size(0) && q.size(1) == k.size(1) &&
               q.size(3) == k.size(3) && q.size(2) % k.size(2) == 0,
           op, ": q is ", q.shape_str(), " but k is ", k.shape_str(),
           " (expected k (B, T, Hkv, hd) with H a multiple of Hkv)");
  FG_CHECK(k.shape() == v.shape(), op, ": k is ", k.shape_str(), " but v is ", v.shape_str());
  FG_CHECK(q.size(3) > 0, op, ": q ", q.shape_str(), " has head_dim 0");
  FG_CHECK(q.dtype() == DType::F32 || q.dtype() == DType::F64 || q.dtype() == DType::BF16, op,
           ": q is ", dtype_name(q.dtype()), " but only f32, f64 and bf16 are supported");
  FG_CHECK(k.dtype() == q.dtype(), op, ": q is ", dtype_name(q.dtype()), " but k is ",
           dtype_name(k.dtype()));
  FG_CHECK(v.dtype() == q.dtype(), op, ": q is ", dtype_name(q.dtype()), " but v is ",
           dtype_name(v.dtype()));
  check_same_device(op, "q", q, "k", k);
  check_same_device(op, "q", q, "v", v);
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
}

// lse is f64 for f64 inputs and f32 otherwise.
DType lse_dtype(DType input) {
  return input == DType::F64 ? DType::F64 : DType::F32;
}

// Rows of head `head` of batch `b` in a (B*T, heads*hd) view: a (T, hd) view with
// row stride heads*hd.
Tensor head_rows(const Tensor& x2, const AttentionDims& d, int64_t b, int64_t head) {
  return x2.slice(0, b * d.seq, (b + 1) * d.seq)
      .slice(1, head * d.head_dim, (head + 1) * d.head_dim);
}

// Turns the scaled scores of one (b, h) into probabilities in place: entries
// above the diagonal become 0; writes each row's log-sum-exp to lse_row.
template <class F>
void causal_softmax_rows(F* s, int64_t seq, F* lse_row) {
  for (int64_t t = 0; t < seq; ++t) {
    F* row = s + t * seq;
    F mx = row[0];
    for (int64_t j = 1; j <= t; ++j) mx = std::max(mx, row[j]);
    F total = 0;
    for (int64_t j = 0; j <= t; ++j) total += std::exp(row[j] - mx);
    F lse = mx + std::log(total);
    for (int64_t j = 0; j <= t; ++j) row[j] = std::exp(row[j] - lse);
    for (int64_t j = t + 1; j < seq; ++j) row[j] = 0;
    lse_row[t] = lse;
  }
}

// P = exp(S - lse) below the diagonal, 0 above, from the scaled scores in s.
template <class F>
void causal_probs_from_lse(F* s, int64_t seq, const F* lse_row) {
  for (int64_t t = 0; t < seq; ++t) {
    F* row = s + t * seq;
    for (int64_t j = 0; j <= t; ++j) row[j] = std::exp(row[j] - lse_row[t]);
    for (int64_t j = t + 1; j < seq; ++j) row[j] = 0;
  }
}

template <class F>
void forward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                 const Tensor& lse) {
  AttentionDims d{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  if (q.numel() == 0) return;
  int64_t group = d.heads / d.kv_heads;
  double scale = 1.0 / std::sqrt(static_cast<double>(d.head_dim));
  Tensor q2 = q.view({d.batch * d.seq, d.heads * d.head_dim});
  Tensor k2 = k.view({d.batch * d.seq, d.kv_heads * d.head_dim});
  Tensor v2 = v.view({d.batch * d.seq, d.kv_heads * d.head_dim});
  Tensor out2 = out.view({d.batch * d.seq, d.heads * d.head_dim});
  Tensor s = Tensor::empty({d.seq, d.seq}, q.dtype());  // (T, T) scores, then probabilities
  F* ps = s.data<F>();
  F* plse = lse.data<F>();  // (B, H, T)
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t h = 0; h < d.heads; ++h) {
      int64_t g = h / group;
      gemm(head_rows(q2, d, b, h), false, head_rows(k2, d, b, g), true, s, scale);
      causal_softmax_rows(ps, d.seq, plse + (b * d.heads + h) * d.seq);
      gemm(s, false, head_rows(v2, d, b, g), false, head_rows(out2, d, b, h));
    }
  }
}

template <class F>
void backward_cpu(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                  const Tensor& out, const Tensor& lse, const AttentionGrads& grads) {
  AttentionDims d{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  grads.dk.zero_();  // accumulated over the query heads of each group
  grads.dv.zero_();
  if (q.numel() == 0) return;
  int64_t group = d.heads / d.kv_heads;
  double scale = 1.0 / std::sqrt(static_cast<double>(d.head_dim));
  int64_t rows = d.batch * d.seq, qw = d.heads * d.head_dim, kw = d.kv_heads * d.head_dim;
  Tensor q2 = q.view({rows, qw}), dout2 = dout.view({rows, qw}), out2 = out.view({rows, qw});
  Tensor dq2 = grads.dq.view({rows, qw});
  Tensor k2 = k.view({rows, kw}), v2 = v.view({rows, kw});
  Tensor dk2 = grads.dk.view({rows, kw}), dv2 = grads.dv.view({rows, kw});
  Tensor p = Tensor::empty({d.seq, d.seq}, q.dtype());   // (T, T) probabilities
  Tensor dp = Tensor::empty({d.seq, d.seq}, q.dtype());  // (T, T) dP, then dS
  F* pp = p.data<F>();
  F* pdp = dp.data<F>();
  const F* plse = lse.data<F>();
  const F* pdout = dout.data<F>();
  const F* pout = out.data<F>();
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t h = 0; h < d.heads; ++h) {
      int64_t g = h / group;
      Tensor qh = head_rows(q2, d, b, h), kg = head_rows(k2, d, b, g), vg = head_rows(v2, d, b, g);
      Tensor douth = head_rows(dout2, d, b, h);
      gemm(qh, false, kg, true, p, scale);
      causal_probs_from_lse(pp, d.seq, plse + (b * d.heads + h) * d.seq);
      gemm(douth, false, vg, true, dp);  // dP = dO V^T
      for (int64_t t = 0; t < d.seq; ++t) {
        // D = rowsum(dO * O) = rowsum(P * dP); dS = P * (dP - D)
        const F* o = pout + ((b * d.seq + t) * d.heads + h) * d.head_dim;
        const F* dout_row = pdout + ((b * d.seq + t) * d.heads + h) * d.head_dim;
        F dsum = 0;
        for (int64_t i = 0; i < d.head_dim; ++i) dsum += dout_row[i] * o[i];
        for (int64_t j = 0; j < d.seq; ++j)
          pdp[t * d.seq + j] = pp[t * d.seq + j] * (pdp[t * d.seq + j] - dsum);
      }
      gemm(dp, false, kg, false, head_rows(dq2, d, b, h), scale);      // dq = dS K scale
      gemm(dp, true, qh, false, head_rows(dk2, d, b, g), scale, 1.0);  // dk += dS^T q scale
      gemm(p, true, douth, false, head_rows(dv2, d, b, g), 1.0, 1.0);  // dv += P^T dO
    }
  }
}

}  // namespace

AttentionOut attention_forward(const Tensor& q, const Tensor& k, const Tensor& v) {
  AttentionDims d = check_qkv("attention", q, k, v);
  AttentionOut r;
  r.out = Tensor::empty(q.shape(), q.dtype(), q.device());
  r.lse = Tensor::empty({d.batch, d.heads, d.seq}, lse_dtype(q.dtype()), q.device());
  Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
#ifdef FG_CUDA
  if (q.is_cuda()) {
    detail::attention_forward_cuda(qc, kc, vc, r.out, r.lse);
    return r;
  }
#endif
  detail::attention_forward_cpu(qc, kc, vc, r.out, r.lse);
  return r;
}

namespace {

AttentionDims check_backward(const char* op, const Tensor& dout, const Tensor& q, const Tensor& k,
                             const Tensor& v, const Tensor& out, const Tensor& lse) {
  AttentionDims d = check_qkv(op, q, k, v);
  check_defined(op, "dout", dout);
  check_defined(op, "out", out);
  FG_CHECK(dout.shape() == q.shape(), op, ": dout is ", dout.shape_str(), " but q is ",
           q.shape_str());
  FG_CHECK(out.shape() == q.shape(), op, ": out is ", out.shape_str(), " but q is ", q.shape_str());
  check_shape(op, "lse", lse, {d.batch, d.heads, d.seq});
  FG_CHECK(dout.dtype() == q.dtype(), op, ": q is ", dtype_name(q.dtype()), " but dout is ",
           dtype_name(dout.dtype()));
  FG_CHECK(out.dtype() == q.dtype(), op, ": q is ", dtype_name(q.dtype()), " but out is ",
           dtype_name(out.dtype()));
  check_dtype(op, "lse", lse, lse_dtype(q.dtype()));
  check_same_device(op, "q", q, "dout", dout);
  check_same_device(op, "q", q, "out", out);
  check_same_device(op, "q", q, "lse", lse);
  return d;
}

}  // namespace

AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& out, const Tensor& lse) {
  check_backward("attention_backward", dout, q, k, v, out, lse);
  AttentionGrads g;
  g.dq = Tensor::empty(q.shape(), q.dtype(), q.device());
  g.dk = Tensor::empty(k.shape(), k.dtype(), k.device());
  g.dv = Tensor::empty(v.shape(), v.dtype(), v.device());
  Tensor doutc = dout.contiguous(), qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(),
         outc = out.contiguous(), lsec = lse.contiguous();
#ifdef FG_CUDA
  if (q.is_cuda()) {
    detail::attention_backward_cuda(doutc, qc, kc, vc, outc, lsec, g);
    return g;
  }
#endif
  detail::attention_backward_cpu(doutc, qc, kc, vc, outc, lsec, g);
  return g;
}

void attention_backward_into_qkv(const Tensor& dout, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& out, const Tensor& lse,
                                 const Tensor& positions, int64_t rotary_dim, double theta,
                                 const Tensor& dqkv, const Tensor& rope_table) {
  const char* op = "attention_backward_into_qkv";
  const AttentionDims d = check_backward(op, dout, q, k, v, out, lse);
  check_rope_args(op, q, positions, rotary_dim);
  FG_CHECK(theta > 0, op, ": theta is ", theta, " but must be > 0");
  const int64_t H = d.heads, Hkv = d.kv_heads, hd = d.head_dim;
  check_shape(op, "dqkv", dqkv, {d.batch * d.seq, (H + 2 * Hkv) * hd});
  check_dtype(op, "dqkv", dqkv, q.dtype());
  check_same_device(op, "dqkv", dqkv, "q", q);
  FG_CHECK(dqkv.is_contiguous(), op, ": dqkv ", dqkv.shape_str(), " is not contiguous");
  detail::check_rope_table(op, rope_table, positions, rotary_dim);
  const Tensor pos = positions.contiguous();
#ifdef FG_CUDA
  if (q.is_cuda() &&
      detail::flash_attention_backward_into_qkv_cuda(
          dout.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous(),
          lse.contiguous(), pos, rotary_dim, theta, dqkv, rope_table))
    return;
#endif
  const AttentionGrads g = attention_backward(dout, q, k, v, out, lse);
  const Tensor heads = dqkv.view({d.batch, d.seq, H + 2 * Hkv, hd});
  detail::rope_segments({{g.dq, heads.slice(2, 0, H), true},
                         {g.dk, heads.slice(2, H, H + Hkv), true},
                         {g.dv, heads.slice(2, H + Hkv, H + 2 * Hkv), false}},
                        pos, rotary_dim, theta, true);
}

namespace detail {

void attention_forward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                           const Tensor& lse) {
  if (q.dtype() == DType::BF16) {  // no bf16 arithmetic on the CPU: compute in f32
    Tensor out32 = Tensor::empty(out.shape(), DType::F32);
    attention_forward_cpu(q.to(DType::F32), k.to(DType::F32), v.to(DType::F32), out32, lse);
    out.copy_(out32);
    return;
  }
  dispatch_float("attention", q.dtype(), [&]<class F>() { forward_cpu<F>(q, k, v, out, lse); });
}

void attention_backward_cpu(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& out, const Tensor& lse, const AttentionGrads& grads) {
  if (q.dtype() == DType::BF16) {
    auto f32 = [](const Tensor& t) { return t.to(DType::F32); };
    AttentionGrads g32{Tensor::empty(q.shape()), Tensor::empty(k.shape()),
                       Tensor::empty(v.shape())};
    attention_backward_cpu(f32(dout), f32(q), f32(k), f32(v), f32(out), lse, g32);
    grads.dq.copy_(g32.dq);
    grads.dk.copy_(g32.dk);
    grads.dv.copy_(g32.dv);
    return;
  }
  dispatch_float("attention_backward", q.dtype(),
                 [&]<class F>() { backward_cpu<F>(dout, q, k, v, out, lse, grads); });
}

}  // namespace detail

}  // namespace fg::ops
