// An int4 matmul for a few rows (decode batches) on ATen's AVX-512 packed int4 layout.
//
// ATen's _weight_int4pack_mm_for_cpu dequantizes the weight to float32 for every tile of 4
// rows and multiplies in float32 FMAs (16 products an instruction): at 16 rows it costs 4
// passes over the weight and is bound by its FMAs. int4_rows unpacks each pair of inputs of a
// block of 64 output columns once for up to 6 rows and multiplies with AVX512_BF16 dot
// products (_mm512_dpbf16_ps: 32 products an instruction). The codes minus 8 (-8..7) and the
// bf16 inputs are exact in bf16, so each product is exact in float32; per group of 32 inputs
// y += scale * sum(x * (code - 8)) + zero * sum(x), the float32 sum of the group's inputs
// computed once a row. The result is rounded to bf16 as ATen's is (then widened to float32):
// it equals ATen's up to float32 rounding (another summation order), not bit for bit.
//
// Weight layout (ATen's int4mm_kernel.cpp on AVX-512, layers.gguf_linear.Int4Layout(64,
// True)): output columns in blocks of 64, each block [K, 32] bytes, byte j of input k holding
// column j (low nibble) and column j + 32 (high nibble). Scales and zeros: [K / 32, N, 2] bf16.
// Compiled only where -march gives AVX512_BF16, VBMI and BW (kInt4Rows); elsewhere the
// caller keeps ATen's kernel.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512BF16__) && defined(__AVX512VBMI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define CORMORANT_INT4_ROWS 1
#endif

namespace cormorant_int4 {

constexpr int64_t kBlockCols = 64;  // output columns of a packed block
constexpr int64_t kGroupSize = 32;  // inputs sharing a scale and zero

#ifdef CORMORANT_INT4_ROWS
constexpr bool kInt4Rows = true;
constexpr int kMaxRows = 6;  // rows a pass: 6 x 4 accumulators + 4 weight vectors in 32 zmm

// acc[r][j] += the pair of inputs k, k + 1 of row r of x (bf16, row stride K) dotted with w[j]
// (16 columns' pairs of bf16 weights) for R rows: one broadcast a row, 4 dot products.
template <int R>
inline void dot_pairs(const c10::BFloat16* x, int64_t K, int64_t k, const __m512i (&w)[4],
                      __m512 (&acc)[R][4]) {
  for (int r = 0; r < R; ++r) {
    int32_t both;
    std::memcpy(&both, x + r * K + k, sizeof both);
    const __m512i a = _mm512_set1_epi32(both);
    for (int j = 0; j < 4; ++j)
      acc[r][j] = _mm512_dpbf16_ps(acc[r][j], (__m512bh)a, (__m512bh)w[j]);
  }
}

// f(std::integral_constant<int, R>) for R = rows (1 to kMaxRows): a block kernel's row count.
template <typename F>
inline void with_rows(int64_t rows, F&& f) {
  switch (rows) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    default: f(std::integral_constant<int, 6>{}); break;
  }
}

// R rows of x (bf16 [R, K], row stride K) times one block's weights -> y [R, 64] (row stride
// ldy), float32 of the bf16-rounded result. xsum: the rows' group sums [R, K / 32].
template <int R>
void block_rows(const c10::BFloat16* x, int64_t K, const float* xsum, const uint8_t* block,
                const c10::BFloat16* sz, int64_t N, float* y, int64_t ldy) {
  // Byte 4n + t of the spread pair of inputs (k, k + 1) is byte n + 16 t of their 64 bytes:
  // 16-bit word 0 of lane n holds the bytes of columns n and n + 16 at input k, word 1 at k + 1.
  alignas(64) uint8_t spread_idx[64];
  for (int p = 0; p < 64; ++p) spread_idx[p] = static_cast<uint8_t>((p >> 2) + 16 * (p & 3));
  alignas(64) uint16_t lut_words[32];  // the low 5 bits of a word -> bf16(low nibble - 8)
  for (int i = 0; i < 32; ++i) lut_words[i] = c10::BFloat16(static_cast<float>((i & 15) - 8)).x;
  const __m512i spread = _mm512_load_si512(spread_idx);
  const __m512i lut = _mm512_load_si512(lut_words);
  const __m512i high_half = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  const int64_t groups = K / kGroupSize;
  alignas(64) float out[R][kBlockCols] = {};
  for (int64_t g = 0; g < groups; ++g) {
    __m512 acc[R][4];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
    for (int64_t k = g * kGroupSize; k < (g + 1) * kGroupSize; k += 2) {
      const __m512i pair = _mm512_permutexvar_epi8(spread, _mm512_loadu_si512(block + k * 32));
      // Columns 0-15, 16-31, 32-47, 48-63: the nibble at bit 0, 8, 4, 12 of each word.
      const __m512i w[4] = {_mm512_permutexvar_epi16(pair, lut),
                            _mm512_permutexvar_epi16(_mm512_srli_epi16(pair, 8), lut),
                            _mm512_permutexvar_epi16(_mm512_srli_epi16(pair, 4), lut),
                            _mm512_permutexvar_epi16(_mm512_srli_epi16(pair, 12), lut)};
      dot_pairs<R>(x, K, k, w, acc);
    }
    for (int j = 0; j < 4; ++j) {  // 16 columns' (scale, zero) pairs: bf16 -> float32
      const __m512i both = _mm512_loadu_si512(sz + (g * N + j * 16) * 2);
      const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(both, 16));
      const __m512 zero = _mm512_castsi512_ps(_mm512_and_si512(both, high_half));
      for (int r = 0; r < R; ++r) {
        __m512 o = _mm512_load_ps(out[r] + j * 16);
        o = _mm512_fmadd_ps(acc[r][j], scale, o);
        o = _mm512_fmadd_ps(_mm512_set1_ps(xsum[r * groups + g]), zero, o);
        _mm512_store_ps(out[r] + j * 16, o);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t n = 0; n < kBlockCols; ++n)
      y[r * ldy + n] = static_cast<float>(c10::BFloat16(out[r][n]));
}

// y [M, N] float32 = x [M, K] bf16 times the packed int4 weight (see the top of this file);
// parallel over blocks of 64 output columns. N must be a multiple of 64, K of 32.
inline void int4_rows(const c10::BFloat16* x, int64_t M, int64_t K, const uint8_t* weight,
                      const c10::BFloat16* sz, int64_t N, float* y) {
  const int64_t groups = K / kGroupSize;
  std::vector<float> xsum(M * groups, 0.f);
  for (int64_t r = 0; r < M; ++r)
    for (int64_t k = 0; k < K; ++k)
      xsum[r * groups + k / kGroupSize] += static_cast<float>(x[r * K + k]);
  at::parallel_for(0, N / kBlockCols, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* block = weight + b * K * kBlockCols / 2;
      const c10::BFloat16* bsz = sz + b * kBlockCols * 2;
      for (int64_t r0 = 0; r0 < M; r0 += kMaxRows) {
        const c10::BFloat16* xr = x + r0 * K;
        const float* xs = xsum.data() + r0 * groups;
        float* yr = y + r0 * N + b * kBlockCols;
        with_rows(std::min<int64_t>(kMaxRows, M - r0), [&](auto R) {
          block_rows<R()>(xr, K, xs, block, bsz, N, yr, N);
        });
      }
    }
  });
}

// W^T [K, N] bf16 of the packed weight (N a multiple of 64), for a dense matmul of many rows:
// (code - 8) * scale + zero in float32 (the product is exact: a 4-bit integer times a bf16),
// rounded once to bf16; `pair`: W1 + W2 of the two halves of K (float32 sum, then rounded),
// [K / 2, N]. The same values as layers.gguf_linear.dequantize_t, without its ~1.5 ns a weight
// of elementwise ATen ops. Parallel over blocks of 64 columns.
inline void int4_dequant_t(const uint8_t* weight, const c10::BFloat16* sz, int64_t K, int64_t N,
                           bool pair, c10::BFloat16* out) {
  const int64_t rows = pair ? K / 2 : K;
  at::parallel_for(0, N / kBlockCols, 1, [&](int64_t begin, int64_t end) {
    const __m512 lut = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    const __m512i high_half = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* block = weight + b * K * kBlockCols / 2;
      for (int64_t k = 0; k < rows; ++k) {
        __m512 w[4];
        for (int64_t half = 0; half < (pair ? 2 : 1); ++half) {
          const int64_t kk = k + half * rows;
          const c10::BFloat16* gsz = sz + ((kk / kGroupSize) * N + b * kBlockCols) * 2;
          const __m256i bytes =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + kk * 32));
          const __m512i lo = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(bytes));  // cols 0-15
          const __m512i hi = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(bytes, 1));  // 16-31
          // Columns 0-15, 16-31: low nibbles; 32-47, 48-63: high nibbles.
          const __m512i codes[4] = {lo, hi, _mm512_srli_epi32(lo, 4), _mm512_srli_epi32(hi, 4)};
          for (int j = 0; j < 4; ++j) {
            const __m512i both = _mm512_loadu_si512(gsz + j * 32);
            const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(both, 16));
            const __m512 zero = _mm512_castsi512_ps(_mm512_and_si512(both, high_half));
            const __m512 v = _mm512_fmadd_ps(_mm512_permutexvar_ps(codes[j], lut), scale, zero);
            w[j] = half ? _mm512_add_ps(w[j], v) : v;
          }
        }
        for (int j = 0; j < 4; ++j) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k * N + b * kBlockCols + 16 * j),
                              (__m256i)_mm512_cvtneps_pbh(w[j]));
        }
      }
    }
  });
}
#else
constexpr bool kInt4Rows = false;
inline void int4_rows(const c10::BFloat16*, int64_t, int64_t, const uint8_t*,
                      const c10::BFloat16*, int64_t, float*) {}
inline void int4_dequant_t(const uint8_t*, const c10::BFloat16*, int64_t, int64_t, bool,
                           c10::BFloat16*) {}
#endif

}  // namespace cormorant_int4
