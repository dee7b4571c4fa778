// Dual-softmax filtering's value mapping and confidences (paper Eq. 2-3) in ONE pass over the scores,
// for CPUs. Python side: direct2v/cpu_kernels.py (build, load, fallback); math reference: direct2v/dsf.py.
//
// Per (group, frame, head) slice, with S = scale * Q K_r^T (Nq x Nk), r_q = logsumexp_k S_qk and
// c_k = logsumexp_q S_qk, the value mapping is softmax_k(S) V_r and the confidence of query q is
//     mean_k exp(S_qk - r_q) exp(S_qk - c_k).
// Stock fused attention kernels reduce over keys only, so c_k costs them a second pass and the
// confidence sum a third. Here every exponential is taken once, shifted per query by m_q (its maximum
// over the first key block, a lower bound of its row maximum) and weighted per query by
// a_q = exp(m_q - M), M = max_q m_q. With E_qk = exp(S_qk - m_q):
//     rowsum_q = sum_k E_qk                  (r_q = m_q + log rowsum_q)
//     colsum_k = sum_q E_qk a_q              (c_k = M + log colsum_k)
//     confidence_q = a_q / (rowsum_q Nk) * sum_k E_qk^2 / colsum_k
// Keys are walked in blocks of BK with ALL queries per block, so each block's colsum is complete
// before its confidence terms are summed (from the block's E, kept in a BK x Nq buffer: bounded
// memory, no Nq x Nk matrix). Vectorised over queries: per key, one FMA per head channel for the
// score and one per value channel for the mapping.
//
// The shifts change only the floating-point range, not the math, and the slice reports failure (the
// caller then takes the exact multi-pass path) wherever that range could cost precision: a query whose
// shift is more than 60 below M, a column sum below exp(-60), or an overflow (a row maximum more than
// ~44 above its first-block maximum).
//
// A second operator, masked_own_attention, computes Eq. 4's other branch, each frame's own attention
// softmax(scale Q_f K_f^T) V_f, for the queries the mask sends back to their frame only (about phi of
// them): gathered per slice into whole vectors, with no padding to the largest slice's count.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t W = Vec::size();
constexpr int64_t BK = 64;           // keys per block (16/32/64/128 measured within 3% on AVX-512)
constexpr int64_t kMaxHead = 256;    // head sizes the generic instantiation takes
constexpr float kRange = 60.f;       // exp(-60) ~ 8.8e-27: far above float32's smallest normal
const float kMinColumnSum = std::exp(-kRange);
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float hsum(const Vec& x) {
  alignas(64) float t[W];
  x.store(t);
  float r = 0.f;
  for (int64_t i = 0; i < W; ++i) r += t[i];
  return r;
}

template <typename T>
struct Buffer {
  std::unique_ptr<T[]> data;
  int64_t size = 0;
  T* get(int64_t n) {
    if (n > size) {
      data.reset(new T[n]);
      size = n;
    }
    return data.get();
  }
};

// The scores of W queries (qv: d vectors, one per channel, queries in lanes) against one key.
template <int64_t D>
inline Vec score_against(const Vec* qv, const float* key, int64_t d) {
  if (D) d = D;
  Vec x = Vec(key[0]) * qv[0], y(0.f);  // two chains of FMAs: half the latency per key (measured: 5% faster)
  int64_t j = 1;
  for (; j + 1 < d; j += 2) {
    y = at::vec::fmadd(Vec(key[j]), qv[j], y);
    x = at::vec::fmadd(Vec(key[j + 1]), qv[j + 1], x);
  }
  if (j < d) y = at::vec::fmadd(Vec(key[j]), qv[j], y);
  return x + y;
}

// One thread's work buffers, reused from slice to slice.
struct Workspace {
  Buffer<float> qt, et, acc, shift, weight, rowsum, confsum, colsum;
  Buffer<int64_t> rows;
};

struct SliceArgs {
  const float* query;  // token t, channel j at query[t * query_stride + j]
  int64_t query_stride;
  const float* key;    // key[t * key_stride + j]
  int64_t key_stride;
  const float* value;  // value[t * value_stride + j]
  int64_t value_stride;
  int64_t nq, nk, d, dv;
  float scale;
  float* out;          // nq x dv, contiguous
  float* conf;         // nq
};

// D, DV: compile-time head sizes (so the query and accumulator vectors stay in registers); 0: runtime.
template <int64_t D, int64_t DV>
bool run_slice(Workspace& ws, const SliceArgs& s) {
  const int64_t d = D ? D : s.d, dv = DV ? DV : s.dv, nq = s.nq, nk = s.nk;
  const float* const key = s.key;  // locals, not the struct's fields, in the loops: no reloads after stores
  const float* const value = s.value;
  const int64_t key_stride = s.key_stride, value_stride = s.value_stride;
  const int64_t nqp = (nq + W - 1) / W * W;  // queries padded to whole vectors
  float* qt = ws.qt.get(d * nqp);            // scaled queries, transposed (d x nqp)
  float* et = ws.et.get(BK * nqp);           // the key block's E, transposed (BK x nqp)
  float* acc = ws.acc.get(dv * nqp);         // unnormalised value mapping, transposed (dv x nqp)
  float* shift = ws.shift.get(nqp);
  float* weight = ws.weight.get(nqp);        // a_q
  float* rowsum = ws.rowsum.get(nqp);
  float* confsum = ws.confsum.get(nqp);
  float* colsum = ws.colsum.get(BK * W);     // per key, one vector of partial sums over queries
  for (int64_t j = 0; j < d; ++j)
    for (int64_t i = 0; i < nqp; ++i) qt[j * nqp + i] = i < nq ? s.query[i * s.query_stride + j] * s.scale : 0.f;
  std::fill(acc, acc + dv * nqp, 0.f);
  std::fill(rowsum, rowsum + nqp, 0.f);
  std::fill(confsum, confsum + nqp, 0.f);

  Vec qv[D ? D : kMaxHead];
  Vec ov[DV ? DV : kMaxHead];
  auto load_queries = [&](int64_t q0) {
    for (int64_t j = 0; j < d; ++j) qv[j] = Vec::loadu(qt + j * nqp + q0);
  };
  auto score = [&](const float* k) { return score_against<D>(qv, k, d); };

  const int64_t first = std::min(BK, nk);
  for (int64_t q0 = 0; q0 < nqp; q0 += W) {
    load_queries(q0);
    Vec m(kNegInf);
    for (int64_t c = 0; c < first; ++c) m = at::vec::maximum(m, score(key + c * key_stride));
    m.store(shift + q0);
  }
  float top = kNegInf;
  for (int64_t i = 0; i < nq; ++i) top = std::max(top, shift[i]);
  for (int64_t i = 0; i < nqp; ++i) {
    if (i < nq && !(shift[i] >= top - kRange)) return false;
    weight[i] = i < nq ? std::exp(shift[i] - top) : 0.f;  // padding queries add nothing to the column sums
  }

  for (int64_t start = 0; start < nk; start += BK) {
    const int64_t keys = std::min(BK, nk - start);
    std::fill(colsum, colsum + keys * W, 0.f);
    for (int64_t q0 = 0; q0 < nqp; q0 += W) {
      load_queries(q0);
      for (int64_t j = 0; j < dv; ++j) ov[j] = Vec::loadu(acc + j * nqp + q0);
      const Vec sh = Vec::loadu(shift + q0), wq = Vec::loadu(weight + q0);
      Vec rows = Vec::loadu(rowsum + q0);
      for (int64_t c = 0; c < keys; ++c) {
        const Vec e = (score(key + (start + c) * key_stride) - sh).exp_u20();
        e.store(et + c * nqp + q0);
        rows = rows + e;
        at::vec::fmadd(e, wq, Vec::loadu(colsum + c * W)).store(colsum + c * W);
        const float* v = value + (start + c) * value_stride;
        for (int64_t j = 0; j < dv; ++j) ov[j] = at::vec::fmadd(Vec(v[j]), e, ov[j]);
      }
      rows.store(rowsum + q0);
      for (int64_t j = 0; j < dv; ++j) ov[j].store(acc + j * nqp + q0);
    }
    alignas(64) float inverse[BK];
    for (int64_t c = 0; c < keys; ++c) {
      const float col = hsum(Vec::loadu(colsum + c * W));
      if (!(col >= kMinColumnSum)) return false;
      inverse[c] = 1.f / col;
    }
    for (int64_t q0 = 0; q0 < nqp; q0 += W) {
      Vec even = Vec::loadu(confsum + q0), odd(0.f);  // two chains: the FMA latency, not its throughput, bounds one
      int64_t c = 0;
      for (; c + 1 < keys; c += 2) {
        const Vec x0 = Vec::loadu(et + c * nqp + q0), x1 = Vec::loadu(et + (c + 1) * nqp + q0);
        even = at::vec::fmadd(x0 * x0, Vec(inverse[c]), even);
        odd = at::vec::fmadd(x1 * x1, Vec(inverse[c + 1]), odd);
      }
      if (c < keys) {
        const Vec x0 = Vec::loadu(et + c * nqp + q0);
        even = at::vec::fmadd(x0 * x0, Vec(inverse[c]), even);
      }
      (even + odd).store(confsum + q0);
    }
  }

  for (int64_t i = 0; i < nq; ++i) {
    const float rows = rowsum[i], terms = confsum[i];
    if (!std::isfinite(rows) || !std::isfinite(terms) || !(rows > 0.f)) return false;
    const float inverse = 1.f / rows;
    for (int64_t j = 0; j < dv; ++j) s.out[i * dv + j] = acc[j * nqp + i] * inverse;
    s.conf[i] = weight[i] * terms * inverse / static_cast<float>(nk);
  }
  return true;
}

struct OwnArgs {
  const bool* keep;    // nq: true where the value mapping is kept
  const float* query;  // as in SliceArgs, the frame's own key and value
  int64_t query_stride;
  const float* key;
  int64_t key_stride;
  const float* value;
  int64_t value_stride;
  int64_t nq, nk, d, dv;
  float scale;
  float* out;          // nq x dv, contiguous, holding the value mapping: the masked-out rows are overwritten
};

// The own attention of one slice's masked-out queries, W at a time (the last vector part padding): their
// scores against every key, kept (nk x W floats), give the exact row maxima; then each exponential once.
template <int64_t D, int64_t DV>
void run_own_slice(Workspace& ws, const OwnArgs& s) {
  const int64_t d = D ? D : s.d, dv = DV ? DV : s.dv, nk = s.nk;
  const float* const key = s.key;
  const float* const value = s.value;
  const int64_t key_stride = s.key_stride, value_stride = s.value_stride;
  int64_t* rows = ws.rows.get(s.nq);  // the masked-out queries, in order
  int64_t count = 0;
  for (int64_t i = 0; i < s.nq; ++i)
    if (!s.keep[i]) rows[count++] = i;
  if (count == 0) return;
  const int64_t ncp = (count + W - 1) / W * W;
  float* qt = ws.qt.get(d * ncp);
  float* scores = ws.et.get(nk * W);  // one vector of queries' scores, kept for the exponentials
  for (int64_t j = 0; j < d; ++j)
    for (int64_t i = 0; i < ncp; ++i)
      qt[j * ncp + i] = i < count ? s.query[rows[i] * s.query_stride + j] * s.scale : 0.f;

  Vec qv[D ? D : kMaxHead];
  Vec ov[DV ? DV : kMaxHead];
  auto score = [&](const float* k) { return score_against<D>(qv, k, d); };
  alignas(64) float lanes[W];
  for (int64_t q0 = 0; q0 < ncp; q0 += W) {
    for (int64_t j = 0; j < d; ++j) qv[j] = Vec::loadu(qt + j * ncp + q0);
    Vec top(kNegInf);
    for (int64_t c = 0; c < nk; ++c) {
      const Vec x = score(key + c * key_stride);
      x.store(scores + c * W);
      top = at::vec::maximum(top, x);
    }
    Vec sum(0.f);
    for (int64_t j = 0; j < dv; ++j) ov[j] = Vec(0.f);
    for (int64_t c = 0; c < nk; ++c) {
      const Vec e = (Vec::loadu(scores + c * W) - top).exp_u20();
      sum = sum + e;
      const float* v = value + c * value_stride;
      for (int64_t j = 0; j < dv; ++j) ov[j] = at::vec::fmadd(Vec(v[j]), e, ov[j]);
    }
    const Vec inverse = Vec(1.f) / sum;  // sum >= 1: the maximum's own term
    const int64_t used = std::min(W, count - q0);
    for (int64_t j = 0; j < dv; ++j) {
      (ov[j] * inverse).store(lanes);
      for (int64_t l = 0; l < used; ++l) s.out[rows[q0 + l] * dv + j] = lanes[l];
    }
  }
}

struct SliceKernels {
  bool (*dual_softmax)(Workspace&, const SliceArgs&);
  void (*own)(Workspace&, const OwnArgs&);
};

template <int64_t D, int64_t DV>
constexpr SliceKernels kernels_for{run_slice<D, DV>, run_own_slice<D, DV>};

// Compile-time head sizes for the tiny model's and SD's heads; any other size takes the runtime ones.
SliceKernels pick(int64_t d, int64_t dv) {
  if (d == dv) {
    switch (d) {
      case 8: return kernels_for<8, 8>;
      case 16: return kernels_for<16, 16>;
      case 32: return kernels_for<32, 32>;
      case 40: return kernels_for<40, 40>;
      case 64: return kernels_for<64, 64>;
      case 80: return kernels_for<80, 80>;
      default: break;
    }
  }
  return kernels_for<0, 0>;
}

// query (groups, frames, heads, nq, d), any strides but a contiguous last dimension;
// key (groups, heads, nk, d), value (groups, heads, nk, dv): every frame of a group against its reference.
// Returns the value mapping (groups, frames, heads, nq, dv), the confidences (groups, frames, heads, nq)
// and whether every slice stayed within range (if not, the outputs are not to be used).
std::tuple<at::Tensor, at::Tensor, bool> dual_softmax_attention(const at::Tensor& query, const at::Tensor& key,
                                                                const at::Tensor& value, double scale) {
  TORCH_CHECK(query.dim() == 5 && key.dim() == 4 && value.dim() == 4,
              "dual_softmax_attention: query must be 5-d, key and value 4-d");
  TORCH_CHECK(query.scalar_type() == at::kFloat && key.scalar_type() == at::kFloat && value.scalar_type() == at::kFloat,
              "dual_softmax_attention: float32 only");
  const int64_t groups = query.size(0), frames = query.size(1), heads = query.size(2), nq = query.size(3);
  const int64_t d = query.size(4), nk = key.size(2), dv = value.size(3);
  TORCH_CHECK(key.size(0) == groups && key.size(1) == heads && key.size(3) == d && value.size(0) == groups &&
                  value.size(1) == heads && value.size(2) == nk,
              "dual_softmax_attention: query, key and value shapes disagree");
  TORCH_CHECK(d <= kMaxHead && dv <= kMaxHead && nq > 0 && nk > 0, "dual_softmax_attention: unsupported sizes");
  const at::Tensor q = query.stride(4) == 1 ? query : query.contiguous();
  const at::Tensor k = key.stride(3) == 1 ? key : key.contiguous();
  const at::Tensor v = value.stride(3) == 1 ? value : value.contiguous();
  auto out = at::empty({groups, frames, heads, nq, dv}, q.options());
  auto conf = at::empty({groups, frames, heads, nq}, q.options());
  const int64_t slices = groups * frames * heads;
  std::vector<char> ok(slices, 1);
  const auto run = pick(d, dv).dual_softmax;
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* cp = conf.data_ptr<float>();
  at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
    Workspace ws;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i / (frames * heads), f = (i / heads) % frames, h = i % heads;
      const SliceArgs args{qp + g * q.stride(0) + f * q.stride(1) + h * q.stride(2), q.stride(3),
                           kp + g * k.stride(0) + h * k.stride(1), k.stride(2),
                           vp + g * v.stride(0) + h * v.stride(1), v.stride(2),
                           nq, nk, d, dv, static_cast<float>(scale), op + i * nq * dv, cp + i * nq};
      ok[i] = run(ws, args);
    }
  });
  const bool all = std::all_of(ok.begin(), ok.end(), [](char x) { return x != 0; });
  return {out, conf, all};
}

// keep (groups, frames, heads, nq) bool; mapped (groups, frames, heads, nq, dv); query (groups, frames, heads,
// nq, d), key (..., nk, d), value (..., nk, dv), the frames' own, any strides but a contiguous last dimension.
// Returns where(keep, mapped, softmax(scale Q K^T) V), a new contiguous tensor.
at::Tensor masked_own_attention(const at::Tensor& keep, const at::Tensor& mapped, const at::Tensor& query,
                                const at::Tensor& key, const at::Tensor& value, double scale) {
  TORCH_CHECK(keep.dim() == 4 && mapped.dim() == 5 && query.dim() == 5 && key.dim() == 5 && value.dim() == 5,
              "masked_own_attention: the mask must be 4-d, the tensors 5-d");
  TORCH_CHECK(keep.scalar_type() == at::kBool, "masked_own_attention: the mask must be bool");
  for (const at::Tensor* x : {&mapped, &query, &key, &value})
    TORCH_CHECK(x->scalar_type() == at::kFloat, "masked_own_attention: float32 only");
  const int64_t groups = query.size(0), frames = query.size(1), heads = query.size(2), nq = query.size(3);
  const int64_t d = query.size(4), nk = key.size(3), dv = value.size(4);
  TORCH_CHECK(keep.sizes() == query.sizes().slice(0, 4) && key.sizes().slice(0, 3) == query.sizes().slice(0, 3) &&
                  key.size(4) == d && value.sizes().slice(0, 4) == key.sizes().slice(0, 4) &&
                  mapped.sizes().slice(0, 4) == query.sizes().slice(0, 4) && mapped.size(4) == dv,
              "masked_own_attention: mask, mapped, query, key and value shapes disagree");
  TORCH_CHECK(d <= kMaxHead && dv <= kMaxHead && nq > 0 && nk > 0, "masked_own_attention: unsupported sizes");
  const at::Tensor m = keep.contiguous();
  const at::Tensor q = query.stride(4) == 1 ? query : query.contiguous();
  const at::Tensor k = key.stride(4) == 1 ? key : key.contiguous();
  const at::Tensor v = value.stride(4) == 1 ? value : value.contiguous();
  at::Tensor out = mapped.clone(at::MemoryFormat::Contiguous);  // one copy, whatever mapped's strides
  const int64_t slices = groups * frames * heads;
  const auto run = pick(d, dv).own;
  const bool* mp = m.data_ptr<bool>();
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
    Workspace ws;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i / (frames * heads), f = (i / heads) % frames, h = i % heads;
      const OwnArgs args{mp + i * nq,
                         qp + g * q.stride(0) + f * q.stride(1) + h * q.stride(2), q.stride(3),
                         kp + g * k.stride(0) + f * k.stride(1) + h * k.stride(2), k.stride(3),
                         vp + g * v.stride(0) + f * v.stride(1) + h * v.stride(2), v.stride(3),
                         nq, nk, d, dv, static_cast<float>(scale), op + i * nq * dv};
      run(ws, args);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(DIRECT2V_NAMESPACE, m) {
  m.def("dual_softmax_attention(Tensor query, Tensor key, Tensor value, float scale) -> (Tensor, Tensor, bool)");
  m.def("masked_own_attention(Tensor keep, Tensor mapped, Tensor query, Tensor key, Tensor value, float scale) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(DIRECT2V_NAMESPACE, CPU, m) {
  m.impl("dual_softmax_attention", dual_softmax_attention);
  m.impl("masked_own_attention", masked_own_attention);
}
