// Llama's RMSNorm for the blocked kernels (cpu_attention_block.cpp, cpu_mlp.cpp), which can take a whole
// pre-norm residual half-layer, x + f(RMSNorm(x)): a block's rows are normalized into a buffer in L2 on
// the way in, and the norm's backward pass runs on the block's input gradient on the way out, so that
// neither the normalized rows nor their gradient travel through memory as separate passes of the compiled
// graph (the four norms of the nano model took ~3% of its step there).
//
// Included inside each source's anonymous namespace, after cpu_vector_math.h; the source includes
// <cmath>, <cstdint>, <memory> and <vector> first.
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

// out (rows x width, contiguous) = RMSNorm of the rows of x (rows x width, contiguous); each row's inverse
// rms into inverses (rows floats).
inline void rms_norm_rows(RmsNorm norm, const float* x, int64_t rows, int64_t width, float* out, float* inverses) {
  const int64_t whole = width / W * W;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * width;
    float* out_row = out + r * width;
    const float inverse = inverses[r] = inverse_rms(row, width, norm.eps);
    for (int64_t j = 0; j < whole; j += W) vstore(out_row + j, vload(norm.weight + j) * (vload(row + j) * inverse));
    for (int64_t j = whole; j < width; ++j) out_row[j] = norm.weight[j] * (row[j] * inverse);
  }
}

// The norm's backward pass for a block of rows, with the residual's gradient added: with r the row's
// inverse rms (from inverses, as rms_norm_rows made them), x_hat = x r and g = grad_normed * weight,
//   grad_x = grad_residual + r (g - x_hat mean(g x_hat)),   grad_weight = sum over rows of grad_normed x_hat.
// The block's share of grad_weight is summed in fp32 and added to grad_weight_sum (`width` doubles), so
// that a sum over many blocks loses nothing more to rounding.
inline void rms_norm_backward_rows(RmsNorm norm, const float* x, const float* inverses, const float* grad_normed, const float* grad_residual,
                                   int64_t rows, int64_t width, float* grad_x, double* grad_weight_sum) {
  const int64_t whole = width / W * W;
  std::vector<float> block_sum(width, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float *row = x + r * width, *grad_row = grad_normed + r * width, *residual = grad_residual + r * width;
    float* out = grad_x + r * width;
    const float inverse = inverses[r];
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

// The norm in a blocked kernel's forward pass: the rows (rows x width) that a block's first product reads,
// RMSNorm(x) into `normed` (with each row's inverse rms into `inverses`) where the norm is on, else x itself.
inline const float* normed_rows(RmsNorm norm, const float* x, int64_t rows, int64_t width, float* normed, float* inverses) {
  if (!norm.on()) return x;
  rms_norm_rows(norm, x, rows, width, normed, inverses);
  return normed;
}

// The norm's side of a blocked kernel's backward pass, block by block: the rows the block's first product
// read (input: RMSNorm(x) made again, or x itself), where that product's input gradient goes (grad_input:
// a block buffer with the norm, else the kernel's grad_x rows), and the norm's backward pass from it into
// grad_x with the residual's gradient added (backward, after input for the same rows). finish() writes the
// norm weight's gradient, summed over the blocks in double (zeros without rows). Without the norm, input and
// grad_input pass through and the rest does nothing.
class RmsNormBackward {
 public:
  RmsNormBackward(RmsNorm norm, int64_t block_rows, int64_t width, float* grad_weight)
      : norm_(norm), width_(width), grad_weight_(grad_weight), normed_(new float[norm.on() ? block_rows * width : 0]),
        grad_normed_(new float[norm.on() ? block_rows * width : 0]), inverses_(new float[norm.on() ? block_rows : 0]),
        grad_weight_sum_(norm.on() ? width : 0, 0.0) {}
  const float* input(const float* x, int64_t rows) { return normed_rows(norm_, x, rows, width_, normed_.get(), inverses_.get()); }
  float* grad_input(float* grad_x) const { return norm_.on() ? grad_normed_.get() : grad_x; }
  void backward(const float* x, const float* grad_residual, int64_t rows, float* grad_x) {
    if (norm_.on())
      rms_norm_backward_rows(norm_, x, inverses_.get(), grad_normed_.get(), grad_residual, rows, width_, grad_x, grad_weight_sum_.data());
  }
  void finish() {
    for (size_t j = 0; j < grad_weight_sum_.size(); ++j) grad_weight_[j] = static_cast<float>(grad_weight_sum_[j]);
  }

 private:
  RmsNorm norm_;
  int64_t width_;
  float* grad_weight_;
  std::unique_ptr<float[]> normed_, grad_normed_, inverses_;  // not zeroed: each block writes them first
  std::vector<double> grad_weight_sum_;
};
