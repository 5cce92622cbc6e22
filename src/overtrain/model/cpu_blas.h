// The BLAS product that overtrain's CPU kernels call between their own loops (cpu_cross_entropy.cpp,
// cpu_mlp.cpp): the Fortran sgemm that torch links (MKL in the x86 wheels), whose address the caller passes
// in. Included inside each source's anonymous namespace: every definition is internal.
#pragma once

// Fortran BLAS sgemm, column-major: C = alpha op(A) op(B) + beta C.
typedef void (*Sgemm)(const char* trans_a, const char* trans_b, const int* m, const int* n, const int* k, const float* alpha,
                      const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);

// Row-major C (m x n) = op(A) op(B) + beta C, op(X) = X or X^T: a row-major matrix is the column-major
// transpose of itself, so this is the column-major C^T = op(B)^T op(A)^T.
inline void gemm(Sgemm sgemm, bool trans_a, bool trans_b, int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                 float beta, float* c, int ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const float one = 1.0f;
  sgemm(&tb, &ta, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}
