// The Llama MLP, down(silu(gate(x)) * up(x)), on CPU in fp32, one thread, a block of rows at a time.
//
// Why: at the nano shape each of the MLP's nine products (three forward, six backward) reads or writes a
// (4096 x 192) activation of 3 MB, and on one core such products run at their cold-cache rate: 64-72
// GFLOP/s in the compiled step, against 85-95 for the same products with their operands in cache
// (docs/benchmarks.md). Here a block of rows goes through the gate-and-up product, SwiGLU and the down
// product while it sits in the L2 cache; only the pre-activations (gate and up side by side) travel to
// memory, once, for the backward pass, streamed past the caches from the block (a cached store evicted the
// block's working set: with the one-pass backward below, the step took 0.956 of its time in an interleaved
// A/B on a Zen 4 core). The backward pass walks the same blocks: SwiGLU's output and the
// gradient of its input are made in L2 and multiplied at once into the gradients of the block's input and
// of the weights (sums over the blocks, written by the first).
//
// Layout: row-major contiguous fp32; x (N, C); norm_weight (C); w_gate_up (2F, C), the gate's rows first; w_down (C, F).
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

#include "cpu_vector_math.h"
#include "cpu_blas.h"
#include "cpu_rms_norm.h"

// sigmoid(g) for any g through exp of -|g| only (exp_nonpositive's domain): 1 / (1 + e) or e / (1 + e).
inline vf sigmoid(vf g) {
  const auto negative = g < 0.0f;
  const vf e = exp_nonpositive(negative ? g : -g);
  const vf inverse = 1.0f / (1.0f + e);
  return negative ? e * inverse : inverse;
}
inline float sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }

// a (rows x F) = silu(gate) * up, where gate and up are the two halves of each row of gate_up (rows x 2F).
void swiglu_forward(const float* gate_up, float* a, int64_t rows, int64_t ff) {
  const int64_t whole = ff / W * W;
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up + r * 2 * ff;
    const float* up = gate + ff;
    float* out = a + r * ff;
    for (int64_t j = 0; j < whole; j += W) {
      const vf g = vload(gate + j);
      vstore(out + j, g * sigmoid(g) * vload(up + j));
    }
    for (int64_t j = whole; j < ff; ++j) out[j] = gate[j] * sigmoid(gate[j]) * up[j];
  }
}

// swiglu_forward from a block of pre-activations in L2 (gate_up_block), streaming them to `kept`
// (rows x 2F), where the backward pass reads them (cpu_vector_math.h's stream_store: a cached store would
// evict the block's working set and first read each line of kept from memory).
void swiglu_forward_keeping(const float* gate_up_block, float* a, float* kept, int64_t rows, int64_t ff) {
  if (!stream_aligned(kept) || ff % W != 0) {  // rows not 64-byte aligned: copy, then compute
    std::memcpy(kept, gate_up_block, sizeof(float) * rows * 2 * ff);
    swiglu_forward(kept, a, rows, ff);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up_block + r * 2 * ff;
    const float* up = gate + ff;
    float* out = a + r * ff;
    vf* kept_gate = reinterpret_cast<vf*>(kept + r * 2 * ff);
    vf* kept_up = reinterpret_cast<vf*>(kept + r * 2 * ff + ff);
    for (int64_t j = 0; j < ff; j += W) {
      const vf g = vload(gate + j), u = vload(up + j);
      stream_store(kept_gate + j / W, g);
      stream_store(kept_up + j / W, u);
      vstore(out + j, g * sigmoid(g) * u);
    }
  }
  stream_fence();
}

// One pass over a block of the backward pass, from the kept pre-activations gate_up (rows x 2F): a =
// silu(gate) * up into `a` (rows x F), for the down projection's weight gradient, and the gradients of gate
// and up into grad_gate_up (rows x 2F) from that of a, which arrives in grad_gate_up's up half (where the
// product dY w_down wrote it; each element is read there before its own d up overwrites it):
//   d gate = da * up * s * (1 + gate * (1 - s)),   d up = da * gate * s,   s = sigmoid(gate).
// One pass and one sigmoid per element: a pass of its own for a took a second sigmoid and a second read of
// the block. gate_up comes from memory, so the rows PREFETCH_ROWS ahead are asked for as each row starts.
constexpr int64_t PREFETCH_ROWS = 8;  // 16 measured no better
void swiglu_backward(const float* gate_up, float* a, float* grad_gate_up, int64_t rows, int64_t ff) {
  const int64_t whole = ff / W * W;
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up + r * 2 * ff;
    const float* up = gate + ff;
    float* out = a + r * ff;
    float* grad_gate = grad_gate_up + r * 2 * ff;
    float* grad_up = grad_gate + ff;  // holds da on entry
    if (r + PREFETCH_ROWS < rows)
      for (int64_t byte = 0; byte < 2 * ff * 4; byte += 64) __builtin_prefetch(reinterpret_cast<const char*>(gate + PREFETCH_ROWS * 2 * ff) + byte, 0, 3);
    for (int64_t j = 0; j < whole; j += W) {
      const vf g = vload(gate + j), u = vload(up + j), s = sigmoid(g), d = vload(grad_up + j);
      const vf gs = g * s;
      vstore(out + j, gs * u);
      vstore(grad_gate + j, d * u * s * (1.0f + g * (1.0f - s)));
      vstore(grad_up + j, d * gs);
    }
    for (int64_t j = whole; j < ff; ++j) {
      const float s = sigmoid(gate[j]), d = grad_up[j];
      out[j] = gate[j] * s * up[j];
      grad_gate[j] = d * up[j] * s * (1.0f + gate[j] * (1.0f - s));
      grad_up[j] = d * gate[j] * s;
    }
  }
}

}  // namespace

extern "C" {

// out (N x C) = (silu(n w_gate^T) * (n w_up^T)) w_down^T with n = x, or, where norm_weight is not null, the
// pre-norm residual half-layer out = x + (the same with n = RMSNorm(x), eps norm_eps); in blocks of block_rows
// rows. gate_up (N x 2F) receives the pre-activations, which the backward pass reads. a_block
// (block_rows x F) is scratch. Returns 0, 2 where an allocation failed, or 3 where a product failed (no C++
// exception crosses the C entry point).
int ot_swiglu_mlp_forward(const Products* products, const float* x, const float* norm_weight, float norm_eps, const float* w_gate_up,
                          const float* w_down, float* out, float* gate_up, float* a_block, int64_t rows, int64_t width, int64_t ff,
                          int64_t block_rows) {
  const RmsNorm norm{norm_weight, norm_eps};
  return status_of([&] {
    const WeightProduct gate_up_product(*products, w_gate_up, 2 * ff, width), down_product(*products, w_down, width, ff);
    const int64_t block = rows < block_rows ? rows : block_rows;
    const std::unique_ptr<float[]> gate_up_block(new float[block * 2 * ff]), normed(new float[norm.on() ? block * width : 0]);  // not zeroed
    const std::unique_ptr<float[]> inverses(new float[norm.on() ? block : 0]);
    for (int64_t first = 0; first < rows; first += block_rows) {
      const int64_t m = rows - first < block_rows ? rows - first : block_rows;
      const float* x_rows = x + first * width;
      float* out_rows = out + first * width;
      gate_up_product.apply(m, normed_rows(norm, x_rows, m, width, normed.get(), inverses.get()), width, false, gate_up_block.get(), 2 * ff);
      swiglu_forward_keeping(gate_up_block.get(), a_block, gate_up + first * 2 * ff, m, ff);
      if (norm.on()) std::memcpy(out_rows, x_rows, sizeof(float) * m * width);  // the residual, which the product adds to
      down_product.apply(m, a_block, ff, norm.on(), out_rows, width);
    }
    return 0;
  });
}

// The gradients of ot_swiglu_mlp_forward's output, from grad_out (N x C), x and the saved gate_up:
// grad_x (N x C), grad_w_gate_up (2F x C) and grad_w_down (C x F), the last two written by the first block
// (the caller zeroes them when N is 0), and, where norm_weight is not null, grad_norm_weight (C; zeros when N
// is 0). a_block (block_rows x F) and grad_block (block_rows x 2F) are scratch. Returns 0, 2 where an
// allocation failed, or 3 where a product failed.
int ot_swiglu_mlp_backward(const Products* products, const float* grad_out, const float* x, const float* norm_weight, float norm_eps,
                           const float* gate_up, const float* w_gate_up, const float* w_down, float* grad_x, float* grad_w_gate_up,
                           float* grad_w_down, float* grad_norm_weight, float* a_block, float* grad_block, int64_t rows, int64_t width,
                           int64_t ff, int64_t block_rows) {
  return status_of([&] {
    WeightGradient down_gradient(*products, grad_w_down, width, ff), gate_up_gradient(*products, grad_w_gate_up, 2 * ff, width);
    RmsNormBackward norm({norm_weight, norm_eps}, rows < block_rows ? rows : block_rows, width, grad_norm_weight);
    for (int64_t first = 0; first < rows; first += block_rows) {
      const int64_t m = rows - first < block_rows ? rows - first : block_rows;
      const float* x_rows = x + first * width;
      const float* gate_up_rows = gate_up + first * 2 * ff;
      const float* grad_out_rows = grad_out + first * width;
      float* grad_x_rows = grad_x + first * width;
      const float* input = norm.input(x_rows, m);  // what the gate-and-up product read
      // da = dY w_down into grad_block's up half; then a again (cheaper than keeping it (N x F) in memory)
      // and the gradients of gate and up, in one pass.
      multiply(*products, m, ff, width, grad_out_rows, width, w_down, ff, false, grad_block + ff, 2 * ff);
      swiglu_backward(gate_up_rows, a_block, grad_block, m, ff);
      down_gradient.add(m, grad_out_rows, width, a_block, ff);  // += dY^T a
      multiply(*products, m, width, 2 * ff, grad_block, 2 * ff, w_gate_up, width, false, norm.grad_input(grad_x_rows), width);
      gate_up_gradient.add(m, grad_block, 2 * ff, input, width);
      norm.backward(x_rows, grad_out_rows, m, grad_x_rows);  // with the norm: grad_x = grad_out (the residual) + its backward pass
    }
    down_gradient.finish();
    gate_up_gradient.finish();
    norm.finish();
    return 0;
  });
}

}  // extern "C"
