// A Llama attention block, o(attention(rotary(qkv(x)))), on CPU in fp32, one thread, a few sequences at a
// time: the stacked q/k/v product, the attention kernel (cpu_attention.cpp) and the output projection.
//
// Why: at the nano shape the q/k/v product writes a (4096 x 192) activation of 3 MB that the attention
// kernel then reads, and the kernel's (4096 x 64) output goes through memory before the output projection
// reads it; in the backward pass the same holds for the gradients. On one core such products run at their
// cold-cache rate (docs/benchmarks.md). Here each block of sequences (256 rows at the nano shape) is
// projected, attended and projected out while it sits in L2; q/k/v, the attention output and the softmax
// statistics still go to memory once, for the backward pass, which walks the same blocks and keeps the
// gradients of the attention output and of q/k/v in L2.
//
// Layout: row-major contiguous fp32; x (B, T, C); w_qkv (3 H D, C), the q rows, then k, then v; w_o (C, H D);
// qkv (B, T, 3, H, D), out (B, T, H, D), lse (B, H, T), probabilities as cpu_attention.cpp keeps them.
// No torch headers: plain C entry points on raw pointers, called through ctypes.
#include <cstdint>
#include <new>
#include <vector>

namespace {

#include "cpu_blas.h"

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

// y (B, T, C) = o(attention(qkv(x))), block_batch sequences at a time; qkv, out, lse and (where not null)
// probabilities receive what the backward pass reads. probability_floats: floats kept per (batch, head).
// Returns 0, or 1 for a head dim the attention kernel has no code for.
int ot_attention_block_forward(Sgemm sgemm, const float* x, const float* w_qkv, const float* w_o, float* y, float* qkv, float* out,
                               float* lse, float* probabilities, const float* cos, const float* sin, int64_t B, int64_t T,
                               int64_t C, int64_t H, int64_t D, int64_t probability_floats, int64_t block_batch, float scale) {
  const int64_t inner = H * D;  // the attention's width; q, k and v are each (T, inner) per sequence
  for (int64_t first = 0; first < B; first += block_batch) {
    const int64_t batch = B - first < block_batch ? B - first : block_batch;
    const int rows = int(batch * T);
    float* qkv_rows = qkv + first * T * 3 * inner;
    float* out_rows = out + first * T * inner;
    gemm(sgemm, false, true, rows, int(3 * inner), int(C), x + first * T * C, int(C), w_qkv, int(C), 0.0f, qkv_rows, int(3 * inner));
    const int status = ot_causal_attention_forward(
        qkv_rows, T * 3 * inner, D, 3 * inner, qkv_rows + inner, T * 3 * inner, D, 3 * inner, qkv_rows + 2 * inner, T * 3 * inner, D,
        3 * inner, out_rows, T * inner, D, inner, lse + first * H * T, probabilities ? probabilities + first * H * probability_floats : nullptr,
        cos, sin, batch, H, T, D, scale);
    if (status != 0) return status;
    gemm(sgemm, false, true, rows, int(C), int(inner), out_rows, int(inner), w_o, int(inner), 0.0f, y + first * T * C, int(C));
  }
  return 0;
}

// The gradients of ot_attention_block_forward's output from grad_y (B, T, C) and what the forward pass
// kept: grad_x (B, T, C), grad_w_qkv (3 H D, C) and grad_w_o (C, H D), the last two written by the first
// block (the caller zeroes them when B is 0). Returns 0, 1 for an unsupported head dim, 2 when its buffers
// cannot be allocated.
int ot_attention_block_backward(Sgemm sgemm, const float* grad_y, const float* x, const float* w_qkv, const float* w_o, float* qkv,
                                float* out, float* lse, const float* probabilities, const float* cos, const float* sin, float* grad_x,
                                float* grad_w_qkv, float* grad_w_o, int64_t B, int64_t T, int64_t C, int64_t H, int64_t D,
                                int64_t probability_floats, int64_t block_batch, float scale) {
  const int64_t inner = H * D;
  const int64_t block = (B < block_batch ? B : block_batch) * T;
  std::vector<float> grad_out, grad_qkv;  // a block's, in L2
  try {
    grad_out.resize(block * inner);
    grad_qkv.resize(block * 3 * inner);
  } catch (const std::bad_alloc&) {
    return 2;  // no C++ exception may cross the C entry point
  }
  for (int64_t first = 0; first < B; first += block_batch) {
    const int64_t batch = B - first < block_batch ? B - first : block_batch;
    const int rows = int(batch * T);
    const float beta = first == 0 ? 0.0f : 1.0f;
    const float* grad_y_rows = grad_y + first * T * C;
    float* qkv_rows = qkv + first * T * 3 * inner;
    float* out_rows = out + first * T * inner;
    float* dq = grad_qkv.data();
    gemm(sgemm, false, false, rows, int(inner), int(C), grad_y_rows, int(C), w_o, int(inner), 0.0f, grad_out.data(), int(inner));
    gemm(sgemm, true, false, int(C), int(inner), rows, grad_y_rows, int(C), out_rows, int(inner), beta, grad_w_o, int(inner));
    const int status = ot_causal_attention_backward(
        qkv_rows, T * 3 * inner, D, 3 * inner, qkv_rows + inner, T * 3 * inner, D, 3 * inner, qkv_rows + 2 * inner, T * 3 * inner, D,
        3 * inner, out_rows, T * inner, D, inner, grad_out.data(), T * inner, D, inner, lse + first * H * T,
        probabilities ? probabilities + first * H * probability_floats : nullptr, dq, dq + inner, dq + 2 * inner, T * 3 * inner, D,
        3 * inner, cos, sin, batch, H, T, D, scale);
    if (status != 0) return status;
    gemm(sgemm, false, false, rows, int(C), int(3 * inner), dq, int(3 * inner), w_qkv, int(C), 0.0f, grad_x + first * T * C, int(C));
    gemm(sgemm, true, false, int(3 * inner), int(C), rows, dq, int(3 * inner), x + first * T * C, int(C), beta, grad_w_qkv, int(C));
  }
  return 0;
}

}  // extern "C"
