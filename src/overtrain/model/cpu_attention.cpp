// Causal softmax attention on CPU in fp32 for head dims that are multiples of 16, one thread.
//
// Why: at small head dims (the nano model's is 16) torch's CPU flash-attention kernel spends most of its
// time outside arithmetic. Here one (batch, head) pair is one unit of work whose queries, keys, values
// and T x T score matrix stay in L1/L2, and each product is a register-blocked loop on 16-float vectors
// (GCC vector extensions: AVX-512 registers where the CPU has them, pairs of AVX registers otherwise).
// The forward pass keeps each row's log-sum-exp; the backward pass recomputes the probabilities from it,
// as FlashAttention does, so nothing of size T x T outlives a unit.
//
// Layout: q, k, v, dout, out are (B, H, T, D) with any strides except a contiguous last dimension.
// No torch headers: plain C entry points on raw pointers, called through ctypes.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float vf __attribute__((vector_size(64)));
typedef float vf_unaligned __attribute__((vector_size(64), aligned(4)));
constexpr int W = 16;  // floats per vector

inline vf vload(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline void vstore(float* p, vf x) { *reinterpret_cast<vf_unaligned*>(p) = x; }
// Written out lane by lane: `vf{} + x` would add 0.0f first (not an identity for -0.0f), an extra
// instruction per multiply; this form folds into the FMA's broadcast operand.
inline vf vbcast(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }

typedef int32_t vi __attribute__((vector_size(64)));
const vi lane_index = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// exp(x) for x <= 0, 16 lanes at once: Cephes' expf (range reduction by ln 2, degree-6 polynomial,
// within ~1 ulp); below -87 the result is clamped near 1e-38, i.e. zero next to the row's largest term.
inline vf exp_nonpositive(vf x) {
  x = x < -87.0f ? vbcast(-87.0f) : x;
  const vf y = x * 1.44269504088896341f + 0.5f;
  vi n = __builtin_convertvector(y, vi);  // truncation; corrected to floor(y) next
  n += (__builtin_convertvector(n, vf) > y);  // true lanes are -1
  const vf nf = __builtin_convertvector(n, vf);
  const vf r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  vf p = vbcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * reinterpret_cast<vf>((n + 127) << 23);
}

inline float horizontal_sum(vf x) {
  float total = 0.0f;
  for (int e = 0; e < W; ++e) total += x[e];
  return total;
}

inline float horizontal_max(vf x) {
  float best = x[0];
  for (int e = 1; e < W; ++e) best = x[e] > best ? x[e] : best;
  return best;
}

// Largest of s[0..i] (row i's scores; the rest of its diagonal block is ignored).
inline float row_max(const float* s, int64_t i) {
  const int64_t diagonal = i / W * W;
  vf best = vload(s + diagonal);
  best = (lane_index + static_cast<int32_t>(diagonal)) <= static_cast<int32_t>(i) ? best : vbcast(-INFINITY);
  for (int64_t j = 0; j < diagonal; j += W) {
    const vf x = vload(s + j);
    best = x > best ? x : best;
  }
  return horizontal_max(best);
}

// Row i of s holds scores for j <= i: replace them by exp(s - shift), zero the rest of the diagonal
// block, and return the sum of the row.
inline float exp_row(float* s, int64_t i, float shift) {
  const int64_t diagonal = i / W * W;
  vf total = {};
  for (int64_t j = 0; j < diagonal; j += W) {
    const vf e = exp_nonpositive(vload(s + j) - shift);
    vstore(s + j, e);
    total += e;
  }
  vf e = exp_nonpositive(vload(s + diagonal) - shift);
  e = (lane_index + static_cast<int32_t>(diagonal)) <= static_cast<int32_t>(i) ? e : vf{};
  vstore(s + diagonal, e);
  return horizontal_sum(total + e);
}

struct View {  // a (T, D) slice of one (batch, head): row stride in elements, last dimension contiguous
  float* data;
  int64_t row;
  float* at(int64_t i) const { return data + i * row; }
};

// xt (D x T16, zero beyond T) = transpose of the T x D rows of x.
template <int D>
void transpose_padded(View x, int64_t T, int64_t T16, float* xt) {
  for (int64_t j = 0; j < T; ++j) {
    const float* xj = x.at(j);
    for (int d = 0; d < D; ++d) xt[d * T16 + j] = xj[d];
  }
  for (int d = 0; d < D; ++d)
    for (int64_t j = T; j < T16; ++j) xt[d * T16 + j] = 0.0f;
}

constexpr int ROWS = 8;  // rows per register block: 8 independent FMA chains cover the FMA latency

// s[i][j] = alpha * x_i . y_j for every 16-wide block of columns j at or left of row i's diagonal block
// (entries right of the diagonal inside that block are computed too; callers overwrite them).
// yt is y transposed (D x T16): one block of it sits in 16 registers while rows stream past.
template <int D>
void scores_lower(View x, const float* yt, int64_t T, int64_t T16, float alpha, float* s) {
  for (int64_t jb = 0; jb < T; jb += W) {
    for (int c = 0; c < D / W; ++c) {
      vf y[W];
      for (int e = 0; e < W; ++e) y[e] = vload(yt + (c * W + e) * T16 + jb);
      const bool first = c == 0, last = c == D / W - 1;
      int64_t i = jb;
      for (; i + ROWS <= T; i += ROWS) {
        vf acc[ROWS];
        const float* xr[ROWS];
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) {
          acc[r] = first ? vf{} : vload(s + (i + r) * T16 + jb);
          xr[r] = x.at(i + r) + c * W;
        }
#pragma GCC unroll 16
        for (int e = 0; e < W; ++e) {
#pragma GCC unroll 8
          for (int r = 0; r < ROWS; ++r) acc[r] += vbcast(xr[r][e]) * y[e];
        }
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) vstore(s + (i + r) * T16 + jb, last ? acc[r] * alpha : acc[r]);
      }
      for (; i < T; ++i) {
        vf a = first ? vf{} : vload(s + i * T16 + jb);
        const float* xi = x.at(i) + c * W;
        for (int e = 0; e < W; ++e) a += vbcast(xi[e]) * y[e];
        vstore(s + i * T16 + jb, last ? a * alpha : a);
      }
    }
  }
}

// out[i] = sum_{j <= i} a[i][j] y_j (T x D, contiguous); a is T x T16, zero right of the diagonal.
template <int D>
void rows_times_values(const float* a, View y, int64_t T, int64_t T16, float* out) {
  for (int64_t jb = 0; jb < T; jb += W) {
    const int width = static_cast<int>(T - jb < W ? T - jb : W);
    for (int c = 0; c < D / W; ++c) {
      vf y_rows[W];
      for (int e = 0; e < W; ++e) y_rows[e] = e < width ? vload(y.at(jb + e) + c * W) : vf{};
      const bool first = jb == 0;
      int64_t i = jb;
      for (; i + ROWS <= T; i += ROWS) {
        vf acc[ROWS];
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) acc[r] = first ? vf{} : vload(out + (i + r) * D + c * W);
        const float* p = a + i * T16 + jb;
#pragma GCC unroll 16
        for (int e = 0; e < W; ++e) {
#pragma GCC unroll 8
          for (int r = 0; r < ROWS; ++r) acc[r] += vbcast(p[r * T16 + e]) * y_rows[e];
        }
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) vstore(out + (i + r) * D + c * W, acc[r]);
      }
      for (; i < T; ++i) {
        float* oi = out + i * D + c * W;
        vf acc = first ? vf{} : vload(oi);
        const float* pi = a + i * T16 + jb;
        for (int e = 0; e < W; ++e) acc += vbcast(pi[e]) * y_rows[e];
        vstore(oi, acc);
      }
    }
  }
}

// out[j] = alpha * sum_{i >= j} a[i][j] x_i (T x D rows with stride out.row): the transposed product,
// one block of 16 columns j at a time with its 16 accumulators in registers.
template <int D>
void columns_times_rows(const float* a, View x, int64_t T, int64_t T16, float alpha, View out) {
  for (int64_t jb = 0; jb < T; jb += W) {
    const int width = static_cast<int>(T - jb < W ? T - jb : W);
    for (int c = 0; c < D / W; ++c) {
      vf acc[W] = {};
      for (int64_t i = jb; i < T; ++i) {
        const vf xi = vload(x.at(i) + c * W);
        const float* ai = a + i * T16 + jb;
        for (int e = 0; e < W; ++e) acc[e] += vbcast(ai[e]) * xi;
      }
      for (int e = 0; e < width; ++e) vstore(out.at(jb + e) + c * W, acc[e] * alpha);
    }
  }
}

template <int D>
void forward_unit(View q, View k, View v, View o, float* lse, int64_t T, float scale, std::vector<float>& scratch) {
  const int64_t T16 = (T + W - 1) / W * W;
  scratch.resize(D * T16 + T * T16 + T * D + T);
  float *kt = scratch.data(), *s = kt + D * T16, *acc = s + T * T16, *row_sum = acc + T * D;
  transpose_padded<D>(k, T, T16, kt);
  scores_lower<D>(q, kt, T, T16, scale, s);
  for (int64_t i = 0; i < T; ++i) {
    float* si = s + i * T16;
    const float m = row_max(si, i);
    row_sum[i] = exp_row(si, i, m);
    lse[i] = m + std::log(row_sum[i]);
  }
  rows_times_values<D>(s, v, T, T16, acc);
  for (int64_t i = 0; i < T; ++i) {
    const float inv = 1.0f / row_sum[i];
    float* oi = o.at(i);
    for (int d = 0; d < D; ++d) oi[d] = acc[i * D + d] * inv;
  }
}

template <int D>
void backward_unit(View q, View k, View v, View o, View dout, const float* lse, View dq, View dk, View dv, int64_t T, float scale,
                   std::vector<float>& scratch) {
  const int64_t T16 = (T + W - 1) / W * W;
  scratch.resize(2 * D * T16 + 2 * T * T16 + T * D);
  float *kt = scratch.data(), *vt = kt + D * T16, *p = vt + D * T16, *ds = p + T * T16, *acc = ds + T * T16;
  transpose_padded<D>(k, T, T16, kt);
  transpose_padded<D>(v, T, T16, vt);
  scores_lower<D>(q, kt, T, T16, scale, p);
  scores_lower<D>(dout, vt, T, T16, 1.0f, ds);  // dP_ij = dO_i . v_j
  for (int64_t i = 0; i < T; ++i) {
    float* pi = p + i * T16;
    float* dsi = ds + i * T16;
    exp_row(pi, i, lse[i]);
    float delta = 0.0f;  // rowsum(dO * O) = sum_j P_ij dP_ij
    const float *doi = dout.at(i), *oi = o.at(i);
    for (int d = 0; d < D; ++d) delta += doi[d] * oi[d];
    const int64_t end = (i / W + 1) * W;
    for (int64_t j = 0; j < end; j += W) vstore(dsi + j, vload(pi + j) * (vload(dsi + j) - delta));  // zero where pi is
  }
  rows_times_values<D>(ds, k, T, T16, acc);
  for (int64_t i = 0; i < T; ++i) {
    float* dqi = dq.at(i);
    for (int d = 0; d < D; ++d) dqi[d] = acc[i * D + d] * scale;
  }
  columns_times_rows<D>(ds, q, T, T16, scale, dk);
  columns_times_rows<D>(p, dout, T, T16, 1.0f, dv);
}

struct Tensor4 {  // pointer and strides (elements) of a (B, H, T, D) tensor
  float* data;
  int64_t b, h, t;
  View unit(int64_t bi, int64_t hi) const { return {data + bi * b + hi * h, t}; }
};

template <int D>
void forward_all(Tensor4 q, Tensor4 k, Tensor4 v, Tensor4 o, float* lse, int64_t B, int64_t H, int64_t T, float scale) {
  std::vector<float> scratch;
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t hi = 0; hi < H; ++hi)
      forward_unit<D>(q.unit(bi, hi), k.unit(bi, hi), v.unit(bi, hi), o.unit(bi, hi), lse + (bi * H + hi) * T, T, scale, scratch);
}

template <int D>
void backward_all(Tensor4 q, Tensor4 k, Tensor4 v, Tensor4 o, Tensor4 dout, const float* lse, Tensor4 dq, Tensor4 dk, Tensor4 dv,
                  int64_t B, int64_t H, int64_t T, float scale) {
  std::vector<float> scratch;
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t hi = 0; hi < H; ++hi)
      backward_unit<D>(q.unit(bi, hi), k.unit(bi, hi), v.unit(bi, hi), o.unit(bi, hi), dout.unit(bi, hi), lse + (bi * H + hi) * T,
                       dq.unit(bi, hi), dk.unit(bi, hi), dv.unit(bi, hi), T, scale, scratch);
}

}  // namespace

#define OT_DISPATCH(D_VALUE, CALL)                    \
  switch (D_VALUE) {                                  \
    case 16: { constexpr int D = 16; CALL; return 0; } \
    case 32: { constexpr int D = 32; CALL; return 0; } \
    case 48: { constexpr int D = 48; CALL; return 0; } \
    case 64: { constexpr int D = 64; CALL; return 0; } \
    default: return 1;                                \
  }

// Each tensor is passed as (pointer, stride_b, stride_h, stride_t). Returns 0, or 1 for an unsupported D.
extern "C" int ot_causal_attention_forward(float* q, int64_t qb, int64_t qh, int64_t qt, float* k, int64_t kb, int64_t kh, int64_t kt,
                                           float* v, int64_t vb, int64_t vh, int64_t vt, float* o, int64_t ob, int64_t oh, int64_t ot,
                                           float* lse, int64_t B, int64_t H, int64_t T, int64_t D, float scale) {
  OT_DISPATCH(D, (forward_all<D>({q, qb, qh, qt}, {k, kb, kh, kt}, {v, vb, vh, vt}, {o, ob, oh, ot}, lse, B, H, T, scale)))
}

extern "C" int ot_causal_attention_backward(float* q, int64_t qb, int64_t qh, int64_t qt, float* k, int64_t kb, int64_t kh, int64_t kt,
                                            float* v, int64_t vb, int64_t vh, int64_t vt, float* o, int64_t ob, int64_t oh, int64_t ot,
                                            float* dout, int64_t db, int64_t dh, int64_t dt, float* lse,
                                            float* dq, float* dk, float* dv, int64_t gb, int64_t gh, int64_t gt,
                                            int64_t B, int64_t H, int64_t T, int64_t D, float scale) {
  OT_DISPATCH(D, (backward_all<D>({q, qb, qh, qt}, {k, kb, kh, kt}, {v, vb, vh, vt}, {o, ob, oh, ot}, {dout, db, dh, dt}, lse,
                                  {dq, gb, gh, gt}, {dk, gb, gh, gt}, {dv, gb, gh, gt}, B, H, T, scale)))
}
