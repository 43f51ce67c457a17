// A bf16 matmul for a few rows (the LM head of a decode batch) on a weight packed for it.
//
// y [M, N] float32 = x [M, K] bf16 times W^T, W [N, K] bf16 packed as [N / 64, K / 2, 64, 2]
// (each 32-bit lane a column's two consecutive inputs): for each pair of inputs the block's
// 64 columns are 4 vectors, each used for up to 6 rows by AVX512_BF16 dot products
// (_mm512_dpbf16_ps, exact products, float32 sums). oneDNN's bf16 matmul took 6.1 ms for
// SmolLM2's 49,152 x 576 head at 16 rows on the 2-core EPYC; the int4 pair of
// int4_rows.h 5.0 ms (twice the products, and its unpacking). Parallel over blocks of 64
// columns. Compiled where int4_rows.h is (CORMORANT_INT4_ROWS).
#pragma once

#include "int4_rows.h"

namespace cormorant_int4 {

#ifdef CORMORANT_INT4_ROWS
template <int R>
void bf16_block_rows(const c10::BFloat16* x, int64_t K, const c10::BFloat16* block, float* y,
                     int64_t ldy) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 2) {
    const c10::BFloat16* w = block + k * kBlockCols;  // 64 columns x 2 inputs
    __m512i wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = _mm512_loadu_si512(w + 32 * j);
    dot_pairs<R>(x, K, k, wv, acc);
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(y + r * ldy + 16 * j, acc[r][j]);
}

inline void bf16_rows(const c10::BFloat16* x, int64_t M, int64_t K, const c10::BFloat16* packed,
                      int64_t N, float* y) {
  at::parallel_for(0, N / kBlockCols, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const c10::BFloat16* block = packed + b * K * kBlockCols;
      for (int64_t r0 = 0; r0 < M; r0 += kMaxRows) {
        const c10::BFloat16* xr = x + r0 * K;
        float* yr = y + r0 * N + b * kBlockCols;
        with_rows(std::min<int64_t>(kMaxRows, M - r0), [&](auto R) {
          bf16_block_rows<R()>(xr, K, block, yr, N);
        });
      }
    }
  });
}
#else
inline void bf16_rows(const c10::BFloat16*, int64_t, int64_t, const c10::BFloat16*, int64_t,
                      float*) {}
#endif

}  // namespace cormorant_int4
