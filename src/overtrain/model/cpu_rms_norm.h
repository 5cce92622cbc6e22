// Llama's RMSNorm for the blocked kernels (cpu_attention_block.cpp, cpu_mlp.cpp), which can take a whole
// pre-norm residual half-layer, x + f(RMSNorm(x)): a block's rows are normalized into a buffer in L2 on
// the way in, and the norm's backward pass runs on the block's input gradient on the way out, so that
// neither the normalized rows nor their gradient travel through memory as separate passes of the compiled
// graph (the four norms of the nano model took ~3% of its step there).
//
// Included inside each source's anonymous namespace, after cpu_vector_math.h; the source includes
// <cmath>, <cstdint> and <vector> first.
#pragma once

// RMSNorm(x) = weight * x / sqrt(mean(x^2) + eps) over rows of `width`, as overtrain.model.llama.RMSNorm
// computes it in fp32. A null weight means no norm (and no residual): the kernel computes f(x) alone.
struct RmsNorm {
  const float* weight;
  float eps;
  bool on() const { return weight != nullptr; }
};

// 1 / sqrt(mean(x^2) + eps) of one row.
inline float inverse_rms(const float* x, int64_t width, float eps) {
  const int64_t whole = width / W * W;
  vf squares = {};
  for (int64_t j = 0; j < whole; j += W) {
    const vf v = vload(x + j);
    squares += v * v;
  }
  float sum = horizontal_sum(squares);
  for (int64_t j = whole; j < width; ++j) sum += x[j] * x[j];
  return 1.0f / std::sqrt(sum / static_cast<float>(width) + eps);
}

// out (rows x width, contiguous) = RMSNorm of the rows of x (rows x width, contiguous).
inline void rms_norm_rows(RmsNorm norm, const float* x, int64_t rows, int64_t width, float* out) {
  const int64_t whole = width / W * W;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * width;
    float* out_row = out + r * width;
    const float inverse = inverse_rms(row, width, norm.eps);
    for (int64_t j = 0; j < whole; j += W) vstore(out_row + j, vload(norm.weight + j) * (vload(row + j) * inverse));
    for (int64_t j = whole; j < width; ++j) out_row[j] = norm.weight[j] * (row[j] * inverse);
  }
}

// The norm's backward pass for a block of rows, with the residual's gradient added: with r the row's
// inverse rms, x_hat = x r and g = grad_normed * weight,
//   grad_x = grad_residual + r (g - x_hat mean(g x_hat)),   grad_weight = sum over rows of grad_normed x_hat.
// The block's share of grad_weight is summed in fp32 and added to grad_weight_sum (`width` doubles), so
// that a sum over many blocks loses nothing more to rounding.
inline void rms_norm_backward_rows(RmsNorm norm, const float* x, const float* grad_normed, const float* grad_residual, int64_t rows,
                                   int64_t width, float* grad_x, double* grad_weight_sum) {
  const int64_t whole = width / W * W;
  std::vector<float> block_sum(width, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float *row = x + r * width, *grad_row = grad_normed + r * width, *residual = grad_residual + r * width;
    float* out = grad_x + r * width;
    const float inverse = inverse_rms(row, width, norm.eps);
    vf dots = {};  // g x_hat, summed over the row
    for (int64_t j = 0; j < whole; j += W) {
      const vf x_hat = vload(row + j) * inverse, grad = vload(grad_row + j);
      dots += grad * vload(norm.weight + j) * x_hat;
      vstore(block_sum.data() + j, vload(block_sum.data() + j) + grad * x_hat);
    }
    float dot = horizontal_sum(dots);
    for (int64_t j = whole; j < width; ++j) {
      const float x_hat = row[j] * inverse;
      dot += grad_row[j] * norm.weight[j] * x_hat;
      block_sum[j] += grad_row[j] * x_hat;
    }
    const float mean_dot = dot / static_cast<float>(width);
    for (int64_t j = 0; j < whole; j += W) {
      const vf x_hat = vload(row + j) * inverse;
      vstore(out + j, vload(residual + j) + inverse * (vload(grad_row + j) * vload(norm.weight + j) - x_hat * mean_dot));
    }
    for (int64_t j = whole; j < width; ++j) out[j] = residual[j] + inverse * (grad_row[j] * norm.weight[j] - row[j] * inverse * mean_dot);
  }
  for (int64_t j = 0; j < width; ++j) grad_weight_sum[j] += block_sum[j];
}

// The rows (rows x width) that a block's first product reads: RMSNorm(x) into `normed` where the norm is
// on, else x itself.
inline const float* normed_rows(RmsNorm norm, const float* x, int64_t rows, int64_t width, float* normed) {
  if (!norm.on()) return x;
  rms_norm_rows(norm, x, rows, width, normed);
  return normed;
}
