// A Llama attention block, o(attention(rotary(qkv(x)))), on CPU in fp32, one thread, a few sequences at a
// time: the stacked q/k/v product, the attention kernel (cpu_attention.cpp) and the output projection.
//
// Why: at the nano shape the q/k/v product writes a (4096 x 192) activation of 3 MB that the attention
// kernel then reads, and the kernel's (4096 x 64) output goes through memory before the output projection
// reads it; in the backward pass the same holds for the gradients. On one core such products run at their
// cold-cache rate (docs/benchmarks.md). Here each block of sequences (256 rows at the nano shape) is
// projected, attended and projected out while it sits in L2; q/k/v, the attention output and the softmax
// statistics still go to memory once, for the backward pass, which walks the same blocks and keeps the
// gradients of the attention output and of q/k/v in L2. q/k/v and the attention output are made in
// block-sized buffers and streamed to memory past the caches (the step took 0.984 of its time with it).
//
// Layout: row-major contiguous fp32; x (B, T, C); norm_weight (C); w_qkv (3 H D, C), the q rows, then k, then v; w_o (C, H D);
// qkv (B, T, 3, H, D), out (B, T, H, D), lse (B, H, T), probabilities as cpu_attention.cpp keeps them.
// No torch headers: plain C entry points on raw pointers, called through ctypes.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // the streaming stores of cpu_vector_math.h
#endif

namespace {

#include "cpu_blas.h"
#include "cpu_rms_norm.h"

}  // namespace

extern "C" int ot_causal_attention_forward(float* q, int64_t qb, int64_t qh, int64_t qt, float* k, int64_t kb, int64_t kh, int64_t kt,
                                           float* v, int64_t vb, int64_t vh, int64_t vt, float* o, int64_t ob, int64_t oh, int64_t ot,
                                           float* lse, float* probabilities, const float* cos, const float* sin, int64_t B, int64_t H,
                                           int64_t T, int64_t D, float scale);
extern "C" int ot_causal_attention_backward(float* q, int64_t qb, int64_t qh, int64_t qt, float* k, int64_t kb, int64_t kh, int64_t kt,
                                            float* v, int64_t vb, int64_t vh, int64_t vt, float* o, int64_t ob, int64_t oh, int64_t ot,
                                            float* dout, int64_t db, int64_t dh, int64_t dt, float* lse, const float* probabilities,
                                            float* dq, float* dk, float* dv, int64_t gb, int64_t gh, int64_t gt,
                                            const float* cos, const float* sin, int64_t B, int64_t H, int64_t T, int64_t D, float scale);

extern "C" {

// y (B, T, C) = o(attention(qkv(n))) with n = x, or, where norm_weight is not null, the pre-norm residual
// half-layer y = x + (the same with n = RMSNorm(x), eps norm_eps); block_batch sequences at a time. qkv,
// out, lse and (where not null) probabilities receive what the backward pass reads. probability_floats:
// floats kept per (batch, head). Returns 0, 1 for a head dim the attention kernel has no code for, 2 where
// an allocation failed, 3 where a product failed.
int ot_attention_block_forward(const Products* products, const float* x, const float* norm_weight, float norm_eps, const float* w_qkv,
                               const float* w_o, float* y, float* qkv, float* out, float* lse, float* probabilities, const float* cos,
                               const float* sin, int64_t B, int64_t T, int64_t C, int64_t H, int64_t D, int64_t probability_floats,
                               int64_t block_batch, float scale) {
  const int64_t inner = H * D;  // the attention's width; q, k and v are each (T, inner) per sequence
  const RmsNorm norm{norm_weight, norm_eps};
  return status_of([&] {
    const WeightProduct qkv_product(*products, w_qkv, 3 * inner, C), o_product(*products, w_o, C, inner);
    const int64_t block = (B < block_batch ? B : block_batch) * T;
    const std::unique_ptr<float[]> qkv_block(new float[block * 3 * inner]), out_block(new float[block * inner]);  // not zeroed
    const std::unique_ptr<float[]> normed(new float[norm.on() ? block * C : 0]), inverses(new float[norm.on() ? block : 0]);
    for (int64_t first = 0; first < B; first += block_batch) {
      const int64_t batch = B - first < block_batch ? B - first : block_batch;
      const int64_t rows = batch * T;
      const float* x_rows = x + first * T * C;
      float* y_rows = y + first * T * C;
      float* qkv_rows = qkv_block.get();
      float* out_rows = out_block.get();
      qkv_product.apply(rows, normed_rows(norm, x_rows, rows, C, normed.get(), inverses.get()), C, false, qkv_rows, 3 * inner);
      stream_copy(qkv_rows, qkv + first * T * 3 * inner, rows * 3 * inner);
      const int status = ot_causal_attention_forward(
          qkv_rows, T * 3 * inner, D, 3 * inner, qkv_rows + inner, T * 3 * inner, D, 3 * inner, qkv_rows + 2 * inner, T * 3 * inner, D,
          3 * inner, out_rows, T * inner, D, inner, lse + first * H * T, probabilities ? probabilities + first * H * probability_floats : nullptr,
          cos, sin, batch, H, T, D, scale);
      if (status != 0) return status;
      if (norm.on()) std::memcpy(y_rows, x_rows, sizeof(float) * rows * C);  // the residual, which the product adds to
      o_product.apply(rows, out_rows, inner, norm.on(), y_rows, C);
      stream_copy(out_rows, out + first * T * inner, rows * inner);
    }
    return 0;
  });
}

// The gradients of ot_attention_block_forward's output from grad_y (B, T, C) and what the forward pass
// kept: grad_x (B, T, C), grad_w_qkv (3 H D, C) and grad_w_o (C, H D), the last two written by the first
// block (the caller zeroes them when B is 0), and, where norm_weight is not null, grad_norm_weight (C; zeros
// when B is 0). Returns 0, 1 for an unsupported head dim, 2 where an allocation failed, 3 where a product
// failed.
int ot_attention_block_backward(const Products* products, const float* grad_y, const float* x, const float* norm_weight, float norm_eps,
                                const float* w_qkv, const float* w_o, float* qkv, float* out, float* lse, const float* probabilities,
                                const float* cos, const float* sin, float* grad_x, float* grad_w_qkv, float* grad_w_o, float* grad_norm_weight,
                                int64_t B, int64_t T, int64_t C, int64_t H, int64_t D, int64_t probability_floats, int64_t block_batch,
                                float scale) {
  const int64_t inner = H * D;
  const int64_t block = (B < block_batch ? B : block_batch) * T;
  return status_of([&] {
    std::vector<float> grad_out(block * inner), grad_qkv(block * 3 * inner);  // a block's, in L2
    RmsNormBackward norm({norm_weight, norm_eps}, block, C, grad_norm_weight);
    WeightGradient o_gradient(*products, grad_w_o, C, inner), qkv_gradient(*products, grad_w_qkv, 3 * inner, C);
    for (int64_t first = 0; first < B; first += block_batch) {
      const int64_t batch = B - first < block_batch ? B - first : block_batch;
      const int64_t rows = batch * T;
      const float* grad_y_rows = grad_y + first * T * C;
      const float* x_rows = x + first * T * C;
      float* grad_x_rows = grad_x + first * T * C;
      float* qkv_rows = qkv + first * T * 3 * inner;
      float* out_rows = out + first * T * inner;
      float* dq = grad_qkv.data();
      multiply(*products, rows, inner, C, grad_y_rows, C, w_o, inner, false, grad_out.data(), inner);
      o_gradient.add(rows, grad_y_rows, C, out_rows, inner);
      const int status = ot_causal_attention_backward(
          qkv_rows, T * 3 * inner, D, 3 * inner, qkv_rows + inner, T * 3 * inner, D, 3 * inner, qkv_rows + 2 * inner, T * 3 * inner, D,
          3 * inner, out_rows, T * inner, D, inner, grad_out.data(), T * inner, D, inner, lse + first * H * T,
          probabilities ? probabilities + first * H * probability_floats : nullptr, dq, dq + inner, dq + 2 * inner, T * 3 * inner, D,
          3 * inner, cos, sin, batch, H, T, D, scale);
      if (status != 0) return status;
      multiply(*products, rows, C, 3 * inner, dq, 3 * inner, w_qkv, C, false, norm.grad_input(grad_x_rows), C);
      qkv_gradient.add(rows, dq, 3 * inner, norm.input(x_rows, rows), C);
      norm.backward(x_rows, grad_y_rows, rows, grad_x_rows);  // with the norm: grad_x = grad_y (the residual) + its backward pass
    }
    o_gradient.finish();
    qkv_gradient.finish();
    norm.finish();
    return 0;
  });
}

}  // extern "C"
