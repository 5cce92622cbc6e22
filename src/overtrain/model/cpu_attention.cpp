// Causal softmax attention on CPU in fp32 for head dims that are multiples of 16, one thread.
//
// Why: at small head dims (the nano model's is 16) torch's CPU flash-attention kernel spends most of its
// time outside arithmetic. Here one (batch, head) pair is one unit of work that stays in L1/L2, and it is
// walked in blocks of 16 queries held *transposed*: one 16-float vector holds one quantity for the 16
// queries of a block (a score against key j, a running max, a row sum). Softmax statistics are then
// vertical vector operations, never horizontal reductions, and every key's work is independent of the
// last, so no loop waits on a per-row chain of dependent operations (the row-at-a-time layout this
// replaced took about twice as long for the forward pass, most of it in such chains).
// The forward pass keeps each row's log-sum-exp, and, when given a buffer, the probabilities themselves
// (T^2 / 2 floats per (batch, head)). The backward pass reads them back where they were kept, and
// otherwise recomputes them from the log-sum-exp as FlashAttention does, so that nothing of size T x T is
// kept. Reading them saves the backward pass its scores and exponentials, about a third of its work;
// the caller keeps them only for short sequences, where they cost little memory.
// GCC vector extensions: AVX-512 registers where the CPU has them, pairs of AVX registers otherwise.
//
// Rotary position embedding (Llama's rotate-half form) is applied here too when tables are passed: q and k
// arrive unrotated, are rotated as they are loaded, and their gradients are rotated back before they are
// written, so the training step makes no separate passes over q, k and their gradients for it.
//
// Layout: q, k, v, dout, out are (B, H, T, D) with any strides except a contiguous last dimension;
// cos and sin are (T, D), contiguous.
// No torch headers: plain C entry points on raw pointers, called through ctypes.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // the streaming stores of cpu_vector_math.h
#endif

namespace {

#include "cpu_vector_math.h"

struct View {  // a (T, D) slice of one (batch, head): row stride in elements, last dimension contiguous
  float* data;
  int64_t row;
  float* at(int64_t i) const { return data + i * row; }
};

// xt[d] (D vectors, lane r = row first + r, times alpha) = the `rows` rows first.. of x, transposed;
// lanes past `rows` are zero.
template <int D>
void load_block_transposed(View x, int64_t first, int rows, float alpha, vf* xt) {
  for (int c = 0; c < D / W; ++c) {
    vf a[W];
    for (int r = 0; r < W; ++r) a[r] = r < rows ? vload(x.at(first + r) + c * W) * alpha : vf{};
    transpose16(a);
    for (int d = 0; d < W; ++d) xt[c * W + d] = a[d];
  }
}

// The transpose back: rows first.. of out (the first `rows`) = xt[d] lanes, times `alpha` per lane.
template <int D>
void store_block_transposed(const vf* xt, vf alpha, int64_t first, int rows, View out) {
  for (int c = 0; c < D / W; ++c) {
    vf a[W];
    for (int d = 0; d < W; ++d) a[d] = xt[c * W + d] * alpha;
    transpose16(a);
    for (int r = 0; r < rows; ++r) vstore(out.at(first + r) + c * W, a[r]);
  }
}

// Lane r of the result: x_r . y for the block's 16 rows x_r, held transposed in xt (D vectors).
// Four accumulators cut the FMA chain to D / 4; xt stays in registers at D = 16 (L1 above).
template <int D>
inline vf block_dot(const vf* xt, const float* y) {
  vf sums[4] = {};
#pragma GCC unroll 64
  for (int d = 0; d < D; ++d) sums[d % 4] += vbcast(y[d]) * xt[d];
  return (sums[0] + sums[1]) + (sums[2] + sums[3]);
}

// acc[d] (D vectors, lanes = the block's queries) = sum over keys j < keys of coefficient[j] * y_j[d].
template <int D>
void block_times_rows(const vf* coefficient, View y, int64_t keys, vf* acc) {
  for (int c = 0; c < D / W; ++c) {
    vf sum[W] = {};
    for (int64_t j = 0; j < keys; ++j) {
      const vf p = coefficient[j];
      const float* yj = y.at(j) + c * W;
#pragma GCC unroll 16
      for (int e = 0; e < W; ++e) sum[e] += vbcast(yj[e]) * p;
    }
    for (int e = 0; e < W; ++e) acc[c * W + e] = sum[e];
  }
}

// out_j += sum over the block's rows r of coefficient[j] lane r * x_{first + r}, for every key j < keys
// (out is T x D, contiguous): the products a key receives from one block of queries.
template <int D>
void accumulate_into_keys(const vf* coefficient, View x, int64_t first, int rows, int64_t keys, float* out) {
  for (int c = 0; c < D / W; ++c) {
    vf x_rows[W];
    for (int r = 0; r < W; ++r) x_rows[r] = r < rows ? vload(x.at(first + r) + c * W) : vf{};
    for (int64_t j = 0; j < keys; ++j) {
      const float* cj = reinterpret_cast<const float*>(coefficient + j);
      vf sums[4] = {vload(out + j * D + c * W), vf{}, vf{}, vf{}};  // four chains of 4 FMAs, not one of 16
#pragma GCC unroll 16
      for (int r = 0; r < W; ++r) sums[r % 4] += vbcast(cj[r]) * x_rows[r];
      vstore(out + j * D + c * W, (sums[0] + sums[1]) + (sums[2] + sums[3]));
    }
  }
}

// Rotary tables: rows of cos and sin (T x D, contiguous); null pointers mean no rotation.
struct Rotary {
  const float* cos;
  const float* sin;
  bool on() const { return cos != nullptr; }
};

// out = x rotated at position t: out[d] = x[d] cos[d] + rotate_half(x)[d] sin[d], where rotate_half(x)
// is (-x[D/2:], x[:D/2]) as in Llama. INVERSE applies the transpose (the rotation by -angle), which maps a
// gradient with respect to the rotated vector to one with respect to x.
template <int D, bool INVERSE>
inline void rotate(const float* x, Rotary rotary, int64_t t, float* out) {
  constexpr int H = D / 2;
  const float *c = rotary.cos + t * D, *s = rotary.sin + t * D;
  if constexpr (D == W) {
    // One vector per row: rotate_half(x) is x with its halves swapped and the first half negated, so a
    // row costs a shuffle and three vector operations where the scalar loops below cost ~40 operations
    // (7% of the forward pass at the nano shape; the results are bit-identical). The inverse applies the
    // transpose: the sine's halves swapped and the sign flipped.
    constexpr vf first_half_negative = {-1, -1, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1};
    const vf x_row = vload(x), sin_row = vload(s);
    const vf x_swapped = __builtin_shufflevector(x_row, x_row, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    const vf sin_signed = INVERSE ? -first_half_negative * __builtin_shufflevector(sin_row, sin_row, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)
                                  : first_half_negative * sin_row;
    vstore(out, x_row * vload(c) + x_swapped * sin_signed);
    return;
  }
  if (!INVERSE) {
    for (int d = 0; d < H; ++d) out[d] = x[d] * c[d] - x[d + H] * s[d];
    for (int d = H; d < D; ++d) out[d] = x[d] * c[d] + x[d - H] * s[d];
  } else {
    for (int d = 0; d < H; ++d) out[d] = x[d] * c[d] + x[d + H] * s[d + H];
    for (int d = H; d < D; ++d) out[d] = x[d] * c[d] - x[d - H] * s[d - H];
  }
}

// Rows [first, first + rows) of x, rotated at their positions, into `out` (rows x D, contiguous): the
// view to read them from. Without rotation, x itself.
template <int D>
inline View rotated_rows(View x, Rotary rotary, int64_t first, int64_t rows, float* out) {
  if (!rotary.on()) return {x.at(first), x.row};
  for (int64_t r = 0; r < rows; ++r) rotate<D, false>(x.at(first + r), rotary, first + r, out + r * D);
  return {out, D};
}

// Rotate rows [first, first + rows) of x back in place (the inverse rotation at each row's position).
template <int D>
inline void rotate_rows_back(View x, Rotary rotary, int64_t first, int64_t rows) {
  if (!rotary.on()) return;
  float row[D];
  for (int64_t r = 0; r < rows; ++r) {
    rotate<D, true>(x.at(first + r), rotary, first + r, row);
    std::memcpy(x.at(first + r), row, sizeof(row));
  }
}

// Keys j of the diagonal block (j >= first) are seen only by queries first + r with r >= j - first.
inline vf causal(vf x, int64_t first, int64_t j, vf masked) {
  return lane_index >= static_cast<int32_t>(j - first) ? x : masked;
}

// p[j] = the block's scaled scores against keys j in [begin, end), masked to `masked` right of the
// diagonal when DIAGONAL (the keys of the block's own 16 positions); returns the running max over them.
template <int D, bool DIAGONAL>
inline vf score_keys(const vf* qt, View k, int64_t first, int64_t begin, int64_t end, vf* p, vf row_max) {
  for (int64_t j = begin; j < end; ++j) {
    const vf score = block_dot<D>(qt, k.at(j));
    p[j] = DIAGONAL ? causal(score, first, j, vbcast(-INFINITY)) : score;
    row_max = p[j] > row_max ? p[j] : row_max;
  }
  return row_max;
}

// p[j] = exp(p[j] - shift) for keys j in [begin, end) (zero right of the diagonal when DIAGONAL);
// returns the running sum.
template <bool DIAGONAL>
inline vf exp_keys(int64_t first, int64_t begin, int64_t end, vf shift, vf* p, vf row_sum) {
  for (int64_t j = begin; j < end; ++j) {
    const vf e = exp_nonpositive(p[j] - shift);
    p[j] = DIAGONAL ? causal(e, first, j, vf{}) : e;
    row_sum += p[j];
  }
  return row_sum;
}

// Rows [first, first + rows) of x, asked for into L2 (__builtin_prefetch's locality 2 is prefetcht1).
template <int D, bool WRITE>
inline void prefetch_rows_into_l2(View x, int64_t first, int64_t rows) {
  for (int64_t t = first; t < first + rows; ++t)
    for (int byte = 0; byte < D * 4; byte += 64) __builtin_prefetch(reinterpret_cast<const char*>(x.at(t)) + byte, WRITE, 2);
}

// The rows of the next (batch, head) pair that it will read and write. Each pair computing its block of
// rows `first` asks for the same rows of the next pair into L2 (prefetcht1, not L1: the current pair's
// working set stays there): the step's activations are far larger than the caches, and without this the
// kernel waits on each row it first touches. Spread over the blocks, not asked for at once, and into L2,
// so it costs nothing when the rows are cached (a loop over cached inputs: the same time). In the training
// step, interleaved with the kernel without it: forward and backward 6% and 11% faster in one quiet run,
// no change in two runs while other tenants loaded the machine. (Asking for a whole pair at once into L1
// gained as much, but slowed cached inputs by 12%.)
struct NextPair {
  View reads[5];
  int n_reads = 0;
  View writes[3];
  int n_writes = 0;

  template <int D>
  void prefetch(int64_t first, int64_t rows) const {
    for (int i = 0; i < n_reads; ++i) prefetch_rows_into_l2<D, false>(reads[i], first, rows);
    for (int i = 0; i < n_writes; ++i) prefetch_rows_into_l2<D, true>(writes[i], first, rows);
  }
};

template <int D>
void forward_unit(View q, View k, View v, View o, float* lse, vf* probabilities, int64_t T, float scale, Rotary rotary,
                  std::vector<vf>& scratch, const NextPair& next) {
  scratch.resize(T + (T * D + W * D) / W);  // p, then the rotated keys and one block of rotated queries
  vf* p = scratch.data();
  float *k_rotated = reinterpret_cast<float*>(p + T), *q_rotated = k_rotated + T * D;
  k = rotated_rows<D>(k, rotary, 0, T, k_rotated);
  vf qt[D], acc[D];  // locals, so the compiler keeps them in registers where they fit (D = 16)
  for (int64_t first = 0; first < T; first += W) {
    const int rows = static_cast<int>(T - first < W ? T - first : W);
    next.prefetch<D>(first, rows);
    const int64_t keys = first + rows;
    load_block_transposed<D>(rotated_rows<D>(q, rotary, first, rows, q_rotated), 0, rows, scale, qt);
    vf row_max = score_keys<D, false>(qt, k, first, 0, first, p, vbcast(-INFINITY));
    row_max = score_keys<D, true>(qt, k, first, first, keys, p, row_max);
    vf row_sum = exp_keys<false>(first, 0, first, row_max, p, vf{});
    row_sum = exp_keys<true>(first, first, keys, row_max, p, row_sum);
    const vf row_lse = row_max + log_positive(row_sum);
    for (int r = 0; r < rows; ++r) lse[first + r] = row_lse[r];
    const vf inverse_sum = 1.0f / row_sum;
    if (probabilities) {  // the block's normalized probabilities, for the backward pass to read back
      // (streamed: the backward pass reads them back long after the rest of the forward pass evicted them)
      for (int64_t j = 0; j < keys; ++j) stream_store(probabilities + j, p[j] * inverse_sum);
      probabilities += keys;
    }
    block_times_rows<D>(p, v, keys, acc);
    store_block_transposed<D>(acc, inverse_sum, first, rows, o);
  }
}

template <int D>
void backward_unit(View q, View k, View v, View o, View dout, const float* lse, const vf* probabilities, View dq, View dk, View dv,
                   int64_t T, float scale, Rotary rotary, std::vector<vf>& scratch, std::vector<float>& key_grads, const NextPair& next) {
  scratch.resize(2 * T + (T * D + W * D) / W);  // p, dS, then the rotated keys and one block of rotated queries
  vf *p = scratch.data(), *ds = p + T;
  float *k_rotated = reinterpret_cast<float*>(ds + T), *q_rotated = k_rotated + T * D;
  k = rotated_rows<D>(k, rotary, 0, T, k_rotated);
  vf qt[D], dot[D], ot[D], acc[D];
  key_grads.assign(2 * T * D, 0.0f);
  float *dk_sum = key_grads.data(), *dv_sum = dk_sum + T * D;
  for (int64_t first = 0; first < T; first += W) {
    const int rows = static_cast<int>(T - first < W ? T - first : W);
    next.prefetch<D>(first, rows);
    const int64_t keys = first + rows;
    const View q_block = rotated_rows<D>(q, rotary, first, rows, q_rotated);  // rows 0.. of it are rows first.. of q
    load_block_transposed<D>(dout, first, rows, 1.0f, dot);
    load_block_transposed<D>(o, first, rows, 1.0f, ot);
    vf delta = {};  // rowsum(dO * O) = sum_j P_ij dP_ij
    for (int d = 0; d < D; ++d) delta += dot[d] * ot[d];
    const vf* block_p = probabilities;  // the forward pass's probabilities where it kept them; else recomputed
    if (probabilities) {
      probabilities += keys;
    } else {
      load_block_transposed<D>(q_block, 0, rows, scale, qt);
      vf row_lse = {};
      for (int r = 0; r < rows; ++r) row_lse[r] = lse[first + r];
      for (int64_t j = 0; j < first; ++j) p[j] = exp_nonpositive(block_dot<D>(qt, k.at(j)) - row_lse);
      // Lanes right of the diagonal may exceed the log-sum-exp (they were never in the softmax): exp's
      // result there is garbage, and the select, not a multiply, drops it.
      for (int64_t j = first; j < keys; ++j) p[j] = causal(exp_nonpositive(block_dot<D>(qt, k.at(j)) - row_lse), first, j, vf{});
      block_p = p;
    }
    for (int64_t j = 0; j < keys; ++j) ds[j] = block_p[j] * (block_dot<D>(dot, v.at(j)) - delta);
    block_times_rows<D>(ds, k, keys, acc);
    store_block_transposed<D>(acc, vbcast(scale), first, rows, dq);
    rotate_rows_back<D>(dq, rotary, first, rows);
    accumulate_into_keys<D>(ds, q_block, 0, rows, keys, dk_sum);
    accumulate_into_keys<D>(block_p, dout, first, rows, keys, dv_sum);
  }
  for (int64_t j = 0; j < T; ++j) {
    float *dkj = dk.at(j), *dvj = dv.at(j);
    for (int c = 0; c < D / W; ++c) {
      vstore(dkj + c * W, vload(dk_sum + j * D + c * W) * scale);
      vstore(dvj + c * W, vload(dv_sum + j * D + c * W));
    }
  }
  rotate_rows_back<D>(dk, rotary, 0, T);
}

// Vectors of kept probabilities per (batch, head): each block of 16 queries keeps one per key it sees
// (the keys up to its last query), T^2 / 32 + T / 2 of them for T a multiple of 16.
inline int64_t probability_vectors(int64_t T) {
  int64_t total = 0;
  for (int64_t first = 0; first < T; first += W) total += first + W < T ? first + W : T;
  return total;
}

struct Tensor4 {  // pointer and strides (elements) of a (B, H, T, D) tensor
  float* data;
  int64_t b, h, t;
  View unit(int64_t bi, int64_t hi) const { return {data + bi * b + hi * h, t}; }
};

// The (batch, head) pair after (bi, hi) in the loops below, in (next_b, next_h); false after the last.
inline bool next_pair(int64_t bi, int64_t hi, int64_t B, int64_t H, int64_t& next_b, int64_t& next_h) {
  next_b = hi + 1 < H ? bi : bi + 1;
  next_h = hi + 1 < H ? hi + 1 : 0;
  return next_b < B;
}

template <int D>
void forward_all(Tensor4 q, Tensor4 k, Tensor4 v, Tensor4 o, float* lse, vf* probabilities, int64_t B, int64_t H, int64_t T, float scale,
                 Rotary rotary) {
  std::vector<vf> scratch;
  const int64_t unit_vectors = probability_vectors(T);
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t hi = 0; hi < H; ++hi) {
      NextPair next;
      int64_t nb, nh;
      if (next_pair(bi, hi, B, H, nb, nh)) next = {{q.unit(nb, nh), k.unit(nb, nh), v.unit(nb, nh)}, 3, {o.unit(nb, nh)}, 1};
      vf* unit_probabilities = probabilities ? probabilities + (bi * H + hi) * unit_vectors : nullptr;
      forward_unit<D>(q.unit(bi, hi), k.unit(bi, hi), v.unit(bi, hi), o.unit(bi, hi), lse + (bi * H + hi) * T, unit_probabilities, T, scale,
                      rotary, scratch, next);
    }
  if (probabilities) stream_fence();
}

template <int D>
void backward_all(Tensor4 q, Tensor4 k, Tensor4 v, Tensor4 o, Tensor4 dout, const float* lse, const vf* probabilities, Tensor4 dq, Tensor4 dk,
                  Tensor4 dv, int64_t B, int64_t H, int64_t T, float scale, Rotary rotary) {
  std::vector<vf> scratch;
  std::vector<float> key_grads;
  const int64_t unit_vectors = probability_vectors(T);
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t hi = 0; hi < H; ++hi) {
      NextPair next;
      int64_t nb, nh;
      if (next_pair(bi, hi, B, H, nb, nh))
        next = {{q.unit(nb, nh), k.unit(nb, nh), v.unit(nb, nh), o.unit(nb, nh), dout.unit(nb, nh)}, 5,
                {dq.unit(nb, nh), dk.unit(nb, nh), dv.unit(nb, nh)}, 3};
      const vf* unit_probabilities = probabilities ? probabilities + (bi * H + hi) * unit_vectors : nullptr;
      backward_unit<D>(q.unit(bi, hi), k.unit(bi, hi), v.unit(bi, hi), o.unit(bi, hi), dout.unit(bi, hi), lse + (bi * H + hi) * T,
                       unit_probabilities, dq.unit(bi, hi), dk.unit(bi, hi), dv.unit(bi, hi), T, scale, rotary, scratch, key_grads, next);
    }
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

// Each tensor is passed as (pointer, stride_b, stride_h, stride_t); cos and sin are (T, D) rotary tables,
// or both null for no rotation; `probabilities` holds ot_causal_attention_probability_floats(T) floats per
// (batch, head), 64-byte aligned, or is null (the forward pass keeps none, the backward pass recomputes
// them). Returns 0, or 1 for an unsupported D.
extern "C" int ot_causal_attention_forward(float* q, int64_t qb, int64_t qh, int64_t qt, float* k, int64_t kb, int64_t kh, int64_t kt,
                                           float* v, int64_t vb, int64_t vh, int64_t vt, float* o, int64_t ob, int64_t oh, int64_t ot,
                                           float* lse, float* probabilities, const float* cos, const float* sin, int64_t B, int64_t H,
                                           int64_t T, int64_t D, float scale) {
  OT_DISPATCH(D, (forward_all<D>({q, qb, qh, qt}, {k, kb, kh, kt}, {v, vb, vh, vt}, {o, ob, oh, ot}, lse, reinterpret_cast<vf*>(probabilities),
                                 B, H, T, scale, {cos, sin})))
}

// How many floats ot_causal_attention_forward writes to `probabilities` per (batch, head) when asked to.
extern "C" int64_t ot_causal_attention_probability_floats(int64_t T) { return probability_vectors(T) * W; }

extern "C" int ot_causal_attention_backward(float* q, int64_t qb, int64_t qh, int64_t qt, float* k, int64_t kb, int64_t kh, int64_t kt,
                                            float* v, int64_t vb, int64_t vh, int64_t vt, float* o, int64_t ob, int64_t oh, int64_t ot,
                                            float* dout, int64_t db, int64_t dh, int64_t dt, float* lse, const float* probabilities,
                                            float* dq, float* dk, float* dv, int64_t gb, int64_t gh, int64_t gt,
                                            const float* cos, const float* sin, int64_t B, int64_t H, int64_t T, int64_t D, float scale) {
  OT_DISPATCH(D, (backward_all<D>({q, qb, qh, qt}, {k, kb, kh, kt}, {v, vb, vh, vt}, {o, ob, oh, ot}, {dout, db, dh, dt}, lse,
                                  reinterpret_cast<const vf*>(probabilities), {dq, gb, gh, gt}, {dk, gb, gh, gt}, {dv, gb, gh, gt}, B, H, T, scale, {cos, sin})))
}
