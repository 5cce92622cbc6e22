// The products that overtrain's CPU kernels make between their own loops (cpu_attention_block.cpp,
// cpu_cross_entropy.cpp, cpu_mlp.cpp), by one of two libraries that torch links, whose addresses the caller
// passes in (cpu_kernels.py): the Fortran sgemm (MKL in the x86 wheels) always, and where it measures faster,
// oneDNN's fp32 brgemm micro-kernel through at::native::cpublas::brgemm.
//
// Why two: the kernels' products are small (a 256-row block against a 64-wide weight at the nano shape) and
// their operands sit in L2. There oneDNN's micro-kernel ran 1.2-1.3x MKL's sgemm on a Zen 4 core (104-115
// against 84-97 GFLOP/s), but it takes only row-major operands as they are: C = A B or C += A B. A product
// with a transposed operand needs that operand transposed first, so the helpers below transpose what is
// cheapest, once where they can: a weight once per call (WeightProduct), the narrower of a weight
// gradient's two operands per block (WeightGradient).
//
// Included inside each source's anonymous namespace: every definition is internal. The including source
// includes <cstdint>, <memory>, <new> and <vector> first (and <immintrin.h> on x86: cpu_vector_math.h).
#pragma once

#include "cpu_vector_math.h"

// Fortran BLAS sgemm, column-major: C = alpha op(A) op(B) + beta C.
typedef void (*Sgemm)(const char* trans_a, const char* trans_b, const int* m, const int* n, const int* k, const float* alpha,
                      const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);

// at::native::cpublas::brgemm for fp32: row-major C (m x n) = A (m x k) B (k x n), or C += A B with add_c;
// vnni must be false. It throws (a C++ exception) where oneDNN lacks the micro-kernel: entry points catch.
typedef void (*Brgemm)(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, bool add_c, const float* a,
                       const float* b, float* c, bool vnni);

// The libraries a kernel's products use, as cpu_kernels.py hands them over: brgemm null means sgemm only.
struct Products {
  Sgemm sgemm;
  Brgemm brgemm;
};

// The status of a C entry point's body, which returns its own (0, or a code of its kernel): a C++ exception
// becomes 2 (an allocation failed) or 3 (a product failed; brgemm throws where oneDNN lacks the kernel),
// since none may cross into ctypes.
template <class Body>
int status_of(Body&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return 2;
  } catch (...) {
    return 3;
  }
}

// Row-major C (m x n) = op(A) op(B) + beta C by sgemm, op(X) = X or X^T: a row-major matrix is the
// column-major transpose of itself, so this is the column-major C^T = op(B)^T op(A)^T.
inline void sgemm_row_major(Sgemm sgemm, bool trans_a, bool trans_b, int m, int n, int k, const float* a, int lda, const float* b,
                            int ldb, float beta, float* c, int ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const float one = 1.0f;
  sgemm(&tb, &ta, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}

// dst (cols x rows, row-major, contiguous) = src^T, for src (rows x cols) with row stride ld. With
// AVX-512: whole 16 x 16 tiles in registers (transpose16; 3.3 us at 256 x 64 on a Zen 4 core, against 9 us
// element by element), the edges element by element. Without it, the same shuffles of 16-float vectors (pairs of
// AVX registers) measured 2x slower than the element loop, which is taken there instead.
inline void transpose(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst) {
#ifdef __AVX512F__
  const int64_t whole_rows = rows / W * W, whole_cols = cols / W * W;
  for (int64_t r0 = 0; r0 < whole_rows; r0 += W) {
    for (int64_t c0 = 0; c0 < whole_cols; c0 += W) {
      vf tile[W];
      for (int i = 0; i < W; ++i) tile[i] = vload(src + (r0 + i) * ld + c0);
      transpose16(tile);
      for (int i = 0; i < W; ++i) vstore(dst + (c0 + i) * rows + r0, tile[i]);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {  // what the tiles left: the last rows % 16 rows, the last cols % 16 columns
    const int64_t first_col = r < whole_rows ? whole_cols : 0;
    for (int64_t c = first_col; c < cols; ++c) dst[c * rows + r] = src[r * ld + c];
  }
#else
  for (int64_t r0 = 0; r0 < rows; r0 += W) {  // element by element, in 16 x 16 tiles that stay in a few cache lines
    const int64_t r1 = r0 + W < rows ? r0 + W : rows;
    for (int64_t c0 = 0; c0 < cols; c0 += W) {
      const int64_t c1 = c0 + W < cols ? c0 + W : cols;
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * ld + c];
    }
  }
#endif
}

// C (m x n) = A B, or C += A B with accumulate; A (m x k) and B (k x n) row-major with row strides lda, ldb.
inline void multiply(const Products& products, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                     int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  if (products.brgemm) {
    products.brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, false);
  } else {
    sgemm_row_major(products.sgemm, false, false, int(m), int(n), int(k), a, int(lda), b, int(ldb), accumulate ? 1.0f : 0.0f, c,
                    int(ldc));
  }
}

// Y = X W^T for a linear layer's weight W (out x in, row-major contiguous), the forward product of every
// block: for brgemm W^T is made once, here, and read by every block.
class WeightProduct {
 public:
  WeightProduct(const Products& products, const float* weight, int64_t out, int64_t in) : products_(products), weight_(weight), out_(out), in_(in) {
    if (products.brgemm) {
      transposed_.reset(new float[out * in]);  // not zeroed: every element is written next
      transpose(weight, out, in, in, transposed_.get());
    }
  }
  // y (rows x out, row stride ldy) = x (rows x in, row stride ldx) W^T, or y += x W^T with accumulate.
  void apply(int64_t rows, const float* x, int64_t ldx, bool accumulate, float* y, int64_t ldy) const {
    if (products_.brgemm) {
      multiply(products_, rows, out_, in_, x, ldx, transposed_.get(), out_, accumulate, y, ldy);
    } else {
      sgemm_row_major(products_.sgemm, false, true, int(rows), int(out_), int(in_), x, int(ldx), weight_, int(in_), accumulate ? 1.0f : 0.0f,
                      y, int(ldy));
    }
  }

 private:
  const Products& products_;
  const float* weight_;
  int64_t out_, in_;
  std::unique_ptr<float[]> transposed_;
};

// A linear layer's weight gradient summed over blocks of rows: grad_w (out x in) = sum over blocks of
// dY^T X, for dY (rows x out) and X (rows x in). For brgemm one operand must be transposed per block: the
// narrower one. Where that is X (out > in), the sum is kept as grad_w^T (in x out) and transposed into
// grad_w by finish(). grad_w is written by the first block; with no block it is left as it was.
class WeightGradient {
 public:
  WeightGradient(const Products& products, float* grad_weight, int64_t out, int64_t in)
      : products_(products), grad_weight_(grad_weight), out_(out), in_(in), keep_transposed_(products.brgemm && out > in) {
    if (keep_transposed_) transposed_sum_.reset(new float[in * out]);  // not zeroed: the first block writes it
  }
  void add(int64_t rows, const float* grad_y, int64_t ld_grad_y, const float* x, int64_t ldx) {
    if (!products_.brgemm) {
      sgemm_row_major(products_.sgemm, true, false, int(out_), int(in_), int(rows), grad_y, int(ld_grad_y), x, int(ldx),
                      blocks_ ? 1.0f : 0.0f, grad_weight_, int(in_));
    } else if (keep_transposed_) {  // grad_w^T (in x out) += X^T dY
      scratch_.resize(in_ * rows);
      transpose(x, rows, in_, ldx, scratch_.data());
      multiply(products_, in_, out_, rows, scratch_.data(), rows, grad_y, ld_grad_y, blocks_ > 0, transposed_sum_.get(), out_);
    } else {  // grad_w (out x in) += dY^T X
      scratch_.resize(out_ * rows);
      transpose(grad_y, rows, out_, ld_grad_y, scratch_.data());
      multiply(products_, out_, in_, rows, scratch_.data(), rows, x, ldx, blocks_ > 0, grad_weight_, in_);
    }
    ++blocks_;
  }
  void finish() {
    if (keep_transposed_ && blocks_ > 0) transpose(transposed_sum_.get(), in_, out_, out_, grad_weight_);
  }

 private:
  const Products& products_;
  float* grad_weight_;
  int64_t out_, in_;
  bool keep_transposed_;
  int64_t blocks_ = 0;
  std::unique_ptr<float[]> transposed_sum_;
  std::vector<float> scratch_;
};
