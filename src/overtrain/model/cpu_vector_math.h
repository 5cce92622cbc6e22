// 16-float vector types and the vector math that overtrain's CPU kernels share (every source of
// cpu_kernels.py, directly or through cpu_blas.h and cpu_rms_norm.h). GCC vector extensions: AVX-512 registers where the CPU has them,
// pairs of AVX registers otherwise. Included inside each source's anonymous namespace: every definition is internal.
// On x86 the including source includes <immintrin.h> first (for the streaming stores below).
#pragma once

typedef float vf __attribute__((vector_size(64)));
typedef float vf_unaligned __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int W = 16;  // floats per vector (and the attention kernel's queries per block)

inline vf vload(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline void vstore(float* p, vf x) { *reinterpret_cast<vf_unaligned*>(p) = x; }
// Written out lane by lane: `vf{} + x` would add 0.0f first (not an identity for -0.0f), an extra
// instruction per multiply; this form folds into the FMA's broadcast operand.
inline vf vbcast(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
const vi lane_index = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// Horizontal max and sum by halving: four shuffle-and-combine steps instead of a 15-step scalar chain.
#define OT_HALVE(x, OP)                                                                                      \
  x = OP(x, __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));              \
  x = OP(x, __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));              \
  x = OP(x, __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));              \
  x = OP(x, __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
inline vf vadd(vf a, vf b) { return a + b; }
inline float horizontal_max(vf x) {
  OT_HALVE(x, vmax)
  return x[0];
}
inline float horizontal_sum(vf x) {
  OT_HALVE(x, vadd)
  return x[0];
}
#undef OT_HALVE

// exp(x) for x <= 0, 16 lanes at once: Cephes' expf (x = n ln 2 + r with |r| <= ln 2 / 2, then
// 1 + r + r^2 P(r) with P of degree 5, within ~2 ulp). Written for a short dependency chain, since the
// attention loops wait on it: n = round(x / ln 2) comes from adding 1.5 * 2^23, which leaves n in the low
// mantissa bits (two operations, where float -> int -> float conversions take five), and P is evaluated
// by Estrin's scheme (depth 3 instead of Horner's 5). Below -87 the result is clamped near 1e-38, i.e.
// zero next to the row's largest term.
inline vf exp_nonpositive(vf x) {
  constexpr float round_shift = 12582912.0f;  // 1.5 * 2^23; its bit pattern is 0x4b400000
  x = x < -87.0f ? vbcast(-87.0f) : x;
  const vf shifted = x * 1.44269504088896341f + round_shift;
  const vf nf = shifted - round_shift;
  const vf r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  const vf r2 = r * r;
  const vf low = r * 1.6666665459e-1f + 5.0000001201e-1f;
  const vf middle = r * 8.3334519073e-3f + 4.1665795894e-2f;
  const vf high = r * 1.9875691500e-4f + 1.3981999507e-3f;
  const vf polynomial = high * (r2 * r2) + (middle * r2 + low);
  const vf two_to_n = reinterpret_cast<vf>((reinterpret_cast<vi>(shifted) - (0x4b400000 - 127)) << 23);
  return (polynomial * r2 + (r + 1.0f)) * two_to_n;
}

// log(x) for normal x > 0, 16 lanes at once: Cephes' logf (mantissa in [sqrt(1/2), sqrt(2)), degree-8
// polynomial, within ~1 ulp). For softmax row sums (in [1, T] in the attention kernel).
inline vf log_positive(vf x) {
  const vi bits = reinterpret_cast<vi>(x);
  vi exponent = ((bits >> 23) & 0xff) - 126;
  vf m = reinterpret_cast<vf>((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const auto small = m < 0.707106781186547524f;
  exponent += small;  // true lanes are -1: one less
  m = small ? m + m - 1.0f : m - 1.0f;
  const vf e = __builtin_convertvector(exponent, vf);
  const vf z = m * m;
  vf y = vbcast(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += e * -2.12194440e-4f;
  y += z * -0.5f;
  return m + y + e * 0.693359375f;
}

// One stage of a 16 x 16 transpose: rows i and i + S (i & S == 0) trade their S-wide blocks. The four
// stages S = 8, 4, 2, 1 transpose the matrix held in a[0..15] (64 shuffles instead of 256 scalar moves).
#define OT_TRANSPOSE_STAGE(S, LO, HI)                                    \
  for (int i = 0; i < W; ++i)                                           \
    if (!(i & S)) {                                                     \
      const vf x = a[i], y = a[i + S];                                  \
      a[i] = __builtin_shufflevector(x, y, LO);                         \
      a[i + S] = __builtin_shufflevector(x, y, HI);                     \
    }
#define OT_L(...) __VA_ARGS__
inline void transpose16(vf* a) {
  OT_TRANSPOSE_STAGE(8, OT_L(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                     OT_L(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))
  OT_TRANSPOSE_STAGE(4, OT_L(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
                     OT_L(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31))
  OT_TRANSPOSE_STAGE(2, OT_L(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),
                     OT_L(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31))
  OT_TRANSPOSE_STAGE(1, OT_L(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),
                     OT_L(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31))
}
#undef OT_L
#undef OT_TRANSPOSE_STAGE

// Stores past the caches (x86's non-temporal stores), for what only a much later pass reads back (what the
// forward pass keeps for the backward pass): a cached store would first read each line from memory and
// evict the working set that the next block needs. `to` must be 64-byte aligned (vf's alignment). After
// streaming, stream_fence() orders the stores before anything that reads them. Elsewhere, plain stores.
inline void stream_store(vf* to, vf x) {
  float* out = reinterpret_cast<float*>(to);
#if defined(__AVX512F__)
  _mm512_stream_ps(out, reinterpret_cast<__m512>(x));
#elif defined(__AVX__)
  typedef float half_vf __attribute__((vector_size(32)));
  _mm256_stream_ps(out, reinterpret_cast<__m256>(half_vf(__builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7))));
  _mm256_stream_ps(out + 8, reinterpret_cast<__m256>(half_vf(__builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15))));
#elif defined(__SSE2__)
  typedef float quarter_vf __attribute__((vector_size(16)));
  _mm_stream_ps(out, reinterpret_cast<__m128>(quarter_vf(__builtin_shufflevector(x, x, 0, 1, 2, 3))));
  _mm_stream_ps(out + 4, reinterpret_cast<__m128>(quarter_vf(__builtin_shufflevector(x, x, 4, 5, 6, 7))));
  _mm_stream_ps(out + 8, reinterpret_cast<__m128>(quarter_vf(__builtin_shufflevector(x, x, 8, 9, 10, 11))));
  _mm_stream_ps(out + 12, reinterpret_cast<__m128>(quarter_vf(__builtin_shufflevector(x, x, 12, 13, 14, 15))));
#else
  *to = x;
#endif
}
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}
inline bool stream_aligned(const float* to) { return reinterpret_cast<uintptr_t>(to) % sizeof(vf) == 0; }

// to[0, n) = from[0, n), streamed where `to` is 64-byte aligned, else by cached stores; fenced.
inline void stream_copy(const float* from, float* to, int64_t n) {
  if (!stream_aligned(to)) {
    for (int64_t i = 0; i < n; ++i) to[i] = from[i];
    return;
  }
  const int64_t whole = n / W * W;
  for (int64_t i = 0; i < whole; i += W) stream_store(reinterpret_cast<vf*>(to + i), vload(from + i));
  for (int64_t i = whole; i < n; ++i) to[i] = from[i];
  stream_fence();
}
