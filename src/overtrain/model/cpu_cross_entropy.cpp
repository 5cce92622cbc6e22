// The output layer and its softmax cross-entropy on CPU in fp32, one thread, a block of rows at a time.
//
// Why: the compiled nano step wrote its (N, V) logits (4 MB), read them back for the log-softmax and twice
// more for the gradient. Here each block of logits is made (by the library the caller passes in: torch's
// BLAS sgemm or oneDNN's brgemm micro-kernel, cpu_blas.h), turned into its gradient in place and multiplied back into the gradients of the hidden
// states and the weight while it sits in the L2 cache, so the logits never travel through memory. The exp
// of cpu_vector_math.h (2 ulp) costs about half of an accurate one.
//
// Layout: row-major contiguous fp32 matrices; targets are int64.
// No torch headers: plain C entry points on raw pointers, called through ctypes.
#include <cmath>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // the streaming stores of cpu_vector_math.h
#endif

namespace {

#include "cpu_vector_math.h"
#include "cpu_blas.h"

// Overwrites one row of logits x (V >= 16 floats) with scale * (softmax(x) - onehot(target)); returns the
// row's cross-entropy, log-sum-exp(x) - x[target]. The last V % 16 logits are read as the row's last 16
// (a window that overlaps the last whole vector), with the overlap masked out of the max and the sum;
// the window is written last, and its overlapping lanes hold the same values the whole vector got.
float softmax_cross_entropy_row(float* x, int64_t vocab, int64_t target, float scale) {
  const int64_t whole = vocab / W * W;
  const int64_t window = vocab - W;
  const auto counted = lane_index >= int32_t(whole - window);  // the window's lanes past the whole vectors
  const float target_logit = x[target];
  const vf tail = vload(x + window);
  // Two running maxima and sums, so that each loop is two dependency chains of half the length.
  vf maxima[2] = {counted ? tail : vbcast(-INFINITY), vbcast(-INFINITY)};
  for (int64_t j = 0; j < whole; j += W) maxima[(j / W) & 1] = vmax(maxima[(j / W) & 1], vload(x + j));
  const float row_max = horizontal_max(vmax(maxima[0], maxima[1]));
  const vf tail_exp = exp_nonpositive(tail - row_max);
  vf sums[2] = {counted ? tail_exp : vbcast(0.0f), vbcast(0.0f)};
  for (int64_t j = 0; j < whole; j += W) {
    const vf e = exp_nonpositive(vload(x + j) - row_max);
    vstore(x + j, e);
    sums[(j / W) & 1] += e;
  }
  const float sum = horizontal_sum(sums[0] + sums[1]);
  const float factor = scale / sum;
  for (int64_t j = 0; j < whole; j += W) vstore(x + j, vload(x + j) * factor);
  vstore(x + window, tail_exp * factor);
  x[target] -= scale;
  return row_max + std::log(sum) - target_logit;
}

// The same for rows of fewer than 16 logits, one at a time.
float softmax_cross_entropy_short_row(float* x, int64_t vocab, int64_t target, float scale) {
  const float target_logit = x[target];
  float row_max = x[0];
  for (int64_t j = 1; j < vocab; ++j) row_max = x[j] > row_max ? x[j] : row_max;
  float sum = 0.0f;
  for (int64_t j = 0; j < vocab; ++j) sum += (x[j] = std::exp(x[j] - row_max));
  for (int64_t j = 0; j < vocab; ++j) x[j] *= scale / sum;
  x[target] -= scale;
  return row_max + std::log(sum) - target_logit;
}

// Each row of a block of logits becomes its cross-entropy's gradient times scale (zeros where the target
// is ignore_index); returns the sum of the rows' cross-entropies.
double softmax_cross_entropy_block(float* logits, int64_t rows, int64_t vocab, const int64_t* targets, int64_t ignore_index,
                                   float scale) {
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = logits + r * vocab;
    if (targets[r] == ignore_index) {
      for (int64_t j = 0; j < vocab; ++j) row[j] = 0.0f;
      continue;
    }
    total += vocab >= W ? softmax_cross_entropy_row(row, vocab, targets[r], scale)
                        : softmax_cross_entropy_short_row(row, vocab, targets[r], scale);
  }
  return total;
}

}  // namespace

extern "C" {

// The output layer and its cross-entropy in blocks of `block_rows` rows: logits = hidden W^T (N x V, one
// block at a time in `logits_block`, block_rows x V), each block turned into scale * (softmax - onehot)
// in place, then grad_hidden = block W (N x C) and grad_weight += block^T hidden (V x C, written by the
// first block). *total receives the sum of the rows' cross-entropies (nats; rows whose target is
// ignore_index add nothing and get zero gradients). The caller checks that every other target lies in
// [0, V). Returns 0, 2 where an allocation failed, or 3 where a product failed (no C++ exception crosses the
// entry point).
int ot_linear_cross_entropy(const Products* products, const float* hidden, const float* weight, const int64_t* targets,
                            float* grad_hidden, float* grad_weight, float* logits_block, int64_t rows, int64_t width, int64_t vocab,
                            int64_t block_rows, int64_t ignore_index, float scale, double* total) {
  *total = 0.0;
  return status_of([&] {
    const WeightProduct logits_product(*products, weight, vocab, width);
    WeightGradient weight_gradient(*products, grad_weight, vocab, width);
    for (int64_t first = 0; first < rows; first += block_rows) {
      const int64_t m = rows - first < block_rows ? rows - first : block_rows;
      const float* hidden_block = hidden + first * width;
      logits_product.apply(m, hidden_block, width, false, logits_block, vocab);
      *total += softmax_cross_entropy_block(logits_block, m, vocab, targets + first, ignore_index, scale);
      multiply(*products, m, width, vocab, logits_block, vocab, weight, width, false, grad_hidden + first * width, width);
      weight_gradient.add(m, logits_block, vocab, hidden_block, width);
    }
    weight_gradient.finish();
    return 0;
  });
}

// The same cross-entropy step alone, for callers that make the products themselves (with oneDNN, see
// cpu_cross_entropy.py): rows of logits (rows x V) overwritten by scale * (softmax - onehot(target)), zeros
// where the target is ignore_index; returns the sum of the rows' cross-entropies.
double ot_softmax_cross_entropy_rows(float* logits, int64_t rows, int64_t vocab, const int64_t* targets, int64_t ignore_index,
                                     float scale) {
  return softmax_cross_entropy_block(logits, rows, vocab, targets, ignore_index, scale);
}

}  // extern "C"
