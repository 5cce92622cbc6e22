// The Llama MLP, down(silu(gate(x)) * up(x)), on CPU in fp32, one thread, a block of rows at a time.
//
// Why: at the nano shape each of the MLP's nine products (three forward, six backward) reads or writes a
// (4096 x 192) activation of 3 MB, and on one core such products run at their cold-cache rate: 64-72
// GFLOP/s in the compiled step, against 85-95 for the same products with their operands in cache
// (docs/benchmarks.md). Here a block of rows goes through the gate-and-up product, SwiGLU and the down
// product while it sits in the L2 cache; only the pre-activations (gate and up side by side) travel to
// memory, once, for the backward pass. The backward pass walks the same blocks: SwiGLU's output and the
// gradient of its input are made in L2 and multiplied at once into the gradients of the block's input and
// of the weights (sums over the blocks, written by the first).
//
// Layout: row-major contiguous fp32; x (N, C); w_gate_up (2F, C), the gate's rows first; w_down (C, F).
// No torch headers: plain C entry points on raw pointers, called through ctypes.
#include <cmath>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>

namespace {

#include "cpu_vector_math.h"
#include "cpu_blas.h"

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

// The gradients of gate and up side by side (rows x 2F) from that of a = silu(gate) * up (rows x F):
//   d gate = da * up * s * (1 + gate * (1 - s)),   d up = da * gate * s,   s = sigmoid(gate).
void swiglu_backward(const float* gate_up, const float* grad_a, float* grad_gate_up, int64_t rows, int64_t ff) {
  const int64_t whole = ff / W * W;
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up + r * 2 * ff;
    const float* up = gate + ff;
    const float* da = grad_a + r * ff;
    float* grad_gate = grad_gate_up + r * 2 * ff;
    float* grad_up = grad_gate + ff;
    for (int64_t j = 0; j < whole; j += W) {
      const vf g = vload(gate + j), s = sigmoid(g), d = vload(da + j);
      vstore(grad_gate + j, d * vload(up + j) * s * (1.0f + g * (1.0f - s)));
      vstore(grad_up + j, d * g * s);
    }
    for (int64_t j = whole; j < ff; ++j) {
      const float s = sigmoid(gate[j]);
      grad_gate[j] = da[j] * up[j] * s * (1.0f + gate[j] * (1.0f - s));
      grad_up[j] = da[j] * gate[j] * s;
    }
  }
}

}  // namespace

extern "C" {

// out (N x C) = (silu(x w_gate^T) * (x w_up^T)) w_down^T, in blocks of block_rows rows; gate_up (N x 2F)
// receives the pre-activations, which the backward pass reads. a_block (block_rows x F) is scratch.
// Returns 0, 2 where an allocation failed, or 3 where a product failed (no C++ exception crosses the C
// entry point).
int ot_swiglu_mlp_forward(const Products* products, const float* x, const float* w_gate_up, const float* w_down, float* out,
                          float* gate_up, float* a_block, int64_t rows, int64_t width, int64_t ff, int64_t block_rows) {
  return status_of([&] {
    const WeightProduct gate_up_product(*products, w_gate_up, 2 * ff, width), down_product(*products, w_down, width, ff);
    for (int64_t first = 0; first < rows; first += block_rows) {
      const int64_t m = rows - first < block_rows ? rows - first : block_rows;
      float* gate_up_rows = gate_up + first * 2 * ff;
      gate_up_product.apply(m, x + first * width, width, gate_up_rows, 2 * ff);
      swiglu_forward(gate_up_rows, a_block, m, ff);
      down_product.apply(m, a_block, ff, out + first * width, width);
    }
    return 0;
  });
}

// The gradients of ot_swiglu_mlp_forward's output, from grad_out (N x C), x and the saved gate_up:
// grad_x (N x C), grad_w_gate_up (2F x C) and grad_w_down (C x F), the last two written by the first block
// (the caller zeroes them when N is 0). a_block (block_rows x F) and grad_block (block_rows x 2F) are scratch.
// Returns 0, 2 where an allocation failed, or 3 where a product failed.
int ot_swiglu_mlp_backward(const Products* products, const float* grad_out, const float* x, const float* gate_up,
                           const float* w_gate_up, const float* w_down, float* grad_x, float* grad_w_gate_up, float* grad_w_down,
                           float* a_block, float* grad_block, int64_t rows, int64_t width, int64_t ff, int64_t block_rows) {
  return status_of([&] {
    WeightGradient down_gradient(*products, grad_w_down, width, ff), gate_up_gradient(*products, grad_w_gate_up, 2 * ff, width);
    for (int64_t first = 0; first < rows; first += block_rows) {
      const int64_t m = rows - first < block_rows ? rows - first : block_rows;
      const float* gate_up_rows = gate_up + first * 2 * ff;
      const float* grad_out_rows = grad_out + first * width;
      swiglu_forward(gate_up_rows, a_block, m, ff);  // a again: cheaper than keeping it (N x F) in memory
      down_gradient.add(m, grad_out_rows, width, a_block, ff);                                   // += dY^T a
      multiply(*products, m, ff, width, grad_out_rows, width, w_down, ff, false, a_block, ff);  // a_block = da = dY w_down
      swiglu_backward(gate_up_rows, a_block, grad_block, m, ff);
      multiply(*products, m, width, 2 * ff, grad_block, 2 * ff, w_gate_up, width, false, grad_x + first * width, width);
      gate_up_gradient.add(m, grad_block, 2 * ff, x + first * width, width);
    }
    down_gradient.finish();
    gate_up_gradient.finish();
    return 0;
  });
}

}  // extern "C"
