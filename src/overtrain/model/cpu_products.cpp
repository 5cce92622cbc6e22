// A linear layer's three training products made block by block, as the blocked kernels make them
// (cpu_blas.h), for one library: cpu_kernels.py checks each library against torch with it and times them.
// No torch headers: a plain C entry point on raw pointers, called through ctypes.
#include <cstdint>
#include <memory>
#include <new>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // the streaming stores of cpu_vector_math.h
#endif

namespace {

#include "cpu_blas.h"

}  // namespace

extern "C" {

// For x (rows x in), w (out x in) and an output gradient grad_y (rows x out), row-major contiguous, in
// blocks of block_rows rows: y = x w^T (rows x out), grad_x = grad_y w (rows x in) and grad_w = grad_y^T x
// (out x in). Returns 0, 2 where an allocation failed, or 3 where a product failed.
int ot_block_products_check(const Products* products, const float* x, const float* w, const float* grad_y, float* y, float* grad_x,
                            float* grad_w, int64_t rows, int64_t in, int64_t out, int64_t block_rows) {
  return status_of([&] {
    const WeightProduct forward(*products, w, out, in);
    WeightGradient weight_gradient(*products, grad_w, out, in);
    for (int64_t first = 0; first < rows; first += block_rows) {
      const int64_t m = rows - first < block_rows ? rows - first : block_rows;
      forward.apply(m, x + first * in, in, false, y + first * out, out);
      multiply(*products, m, in, out, grad_y + first * out, out, w, in, false, grad_x + first * in, in);
      weight_gradient.add(m, grad_y + first * out, out, x + first * in, in);
    }
    weight_gradient.finish();
    return 0;
  });
}

}  // extern "C"
