// The Llama decoder's pure-decode step on the CPU over int4 weights, as one custom op.
//
// cormorant_cpu::decode_step runs every decoder layer for M rows (each row one sequence with
// one new token: its own position, slot, block-table row and context length) and the final
// norm, and returns the final hidden state [M, hidden] float32. The projections go through
// the int4 kernel of int4_rows.h where it is built and the caller allows it (rows_min), else
// ATen's (_weight_int4pack_mm_for_cpu: bf16 rows, groups of 32), "pair" weights taking their
// input twice ([x | x]); rms_norm, rotary, the KV write into the paged float32 cache,
// one-query GQA attention read through the block table, silu(gate) * up and the residual adds
// are plain loops here (float32, the norm's sum of squares in double; exp vectorized on
// AVX-512). The loops in at::parallel_for are OpenMP (built with -fopenmp). The Python side
// (cormorant.kernels.cpu_decode builds it, models.llama_decode1 calls it) only sends steps
// that qualify; every shape, dtype and index is still checked here (TORCH_CHECK).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/_weight_int4pack_mm_for_cpu.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "bf16_rows.h"
#include "int4_rows.h"

namespace {

using at::Tensor;
using bf16 = c10::BFloat16;
constexpr int64_t kGroup = 32;

void check_f32(const Tensor& t, const char* what, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              what, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.dim() == dim, what, " must have ", dim, " dimensions, got ", t.dim());
}

// One int4 projection's operands and shape.
struct Proj {
  Tensor weight, scales_zeros;
  bool pair;
  int64_t in, out;  // the layer's input width (before pairing) and output width
};

Proj make_proj(const Tensor& w, const Tensor& sz, int64_t pair, int64_t in, const char* what) {
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 2, what, ": packed int4 weight [N, K/2] expected");
  TORCH_CHECK(sz.device().is_cpu() && sz.scalar_type() == at::kBFloat16 && sz.dim() == 3 &&
              sz.size(2) == 2, what, ": scales_zeros [K/32, N, 2] bf16 expected");
  const int64_t k = pair ? 2 * in : in;
  TORCH_CHECK(w.size(1) * 2 == k && sz.size(0) * kGroup == k && sz.size(1) == w.size(0), what,
              ": weight ", w.sizes(), " / scales ", sz.sizes(), " do not take ", k, " inputs");
  return Proj{w, sz, pair != 0, in, w.size(0)};
}

// x [M, in] bf16 rows written into a [M, k] buffer (twice for a pair), multiplied -> [M, out]
// bf16; the result converted to float32 into `out`. `rows_kernel`: the weights are in ATen's
// AVX-512 layout and int4_rows.h is built, so it runs instead of ATen's kernel.
void run_proj(const Proj& p, const Tensor& xb, float* out, int64_t rows, bool rows_kernel) {
  if (rows_kernel) {
    cormorant_int4::int4_rows(xb.data_ptr<bf16>(), rows, xb.size(1), p.weight.data_ptr<uint8_t>(),
                              p.scales_zeros.data_ptr<bf16>(), p.out, out);
    return;
  }
  Tensor y = at::_weight_int4pack_mm_for_cpu(xb, p.weight, kGroup, p.scales_zeros);
  TORCH_CHECK(y.scalar_type() == at::kBFloat16 && y.is_contiguous() && y.size(0) == rows &&
              y.size(1) == p.out, "int4 matmul returned an unexpected tensor");
  const bf16* src = y.data_ptr<bf16>();
  for (int64_t i = 0, n = rows * p.out; i < n; ++i) out[i] = static_cast<float>(src[i]);
}

// Rows of float32 values [M, width] -> the projection's bf16 input [M, width or 2 width].
Tensor to_input(const Proj& p, const float* x, int64_t rows) {
  const int64_t k = p.pair ? 2 * p.in : p.in;
  Tensor xb = at::empty({rows, k}, at::TensorOptions().dtype(at::kBFloat16));
  bf16* dst = xb.data_ptr<bf16>();
  for (int64_t r = 0; r < rows; ++r) {
    bf16* row = dst + r * k;
    for (int64_t i = 0; i < p.in; ++i) row[i] = bf16(x[r * p.in + i]);
    if (p.pair) std::copy(row, row + p.in, row + p.in);
  }
  return xb;
}

// out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * w, as torch.rms_norm composes it (float32).
void rms_norm(const float* x, const float* w, float* out, int64_t rows, int64_t n, double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum / n) + static_cast<float>(eps));
    for (int64_t i = 0; i < n; ++i) out[r * n + i] = (xr[i] * inv) * w[i];
  }
}

// GCC/Clang vector types: lowered to whatever vectors -march gives (AVX2 or AVX-512 here).
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The dot product of two float32 rows: two 8-lane partial sums, then a short tree (a plain
// loop of 16 accumulators reduced one by one was a chain of 16 dependent adds a key).
inline float dot(const float* a, const float* b, int64_t n) {
  v8 s0 = {0}, s1 = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 += load8(a + i) * load8(b + i);
    s1 += load8(a + i + 8) * load8(b + i + 8);
  }
  const v8 s = s0 + s1;
  const v4 t = v4{s[0], s[1], s[2], s[3]} + v4{s[4], s[5], s[6], s[7]};
  float out = (t[0] + t[2]) + (t[1] + t[3]);
  for (; i < n; ++i) out += a[i] * b[i];
  return out;
}

// exp of 16 float32 lanes where AVX-512 is built (silu and softmax call it ~1.4M times a step
// of 16 SmolLM2 rows; std::exp one value at a time took ~3.5 ms of it): 2^n p(r), n =
// round(x / ln 2), r = x - n ln 2 in two parts, p the Taylor polynomial to r^7 (|r| <= 0.35:
// within 1 ulp of std::exp over -110..90), times 2^n by scalef (0 and inf at the ends).
#ifdef __AVX512F__
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(89.f)), _mm512_set1_ps(-104.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  for (const float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}
#endif

// out[i] = exp(x[i] - shift) for n values; returns their sum.
inline float exp_shifted(float* x, int64_t n, float shift) {
  float total = 0.f;
  int64_t i = 0;
#ifdef __AVX512F__
  __m512 sum = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(shift)));
    _mm512_storeu_ps(x + i, e);
    sum = _mm512_add_ps(sum, e);
  }
  total = _mm512_reduce_add_ps(sum);
#endif
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    total += x[i];
  }
  return total;
}

// out[i] = silu(gate[i]) * up[i] = gate / (1 + exp(-gate)) * up.
inline void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
#ifdef __AVX512F__
  const __m512 one = _mm512_set1_ps(1.f);
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)),
                                            _mm512_loadu_ps(up + i)));
  }
#endif
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

struct Geometry {
  int64_t heads, kv_heads, dim, block_size, num_blocks, table_width;
  float scale;
};

// Rotary of q's and k's heads of each row in place ([x1, x2] -> [x1 c - x2 s, x2 c + x1 s]),
// then k and v written into the row's slot of the cache.
void rotate_and_write(float* qkv, int64_t rows, const Geometry& g, const float* cos_sin,
                      const int64_t* positions, const int64_t* slots, float* cache) {
  const int64_t width = (g.heads + 2 * g.kv_heads) * g.dim, half = g.dim / 2;
  const int64_t token = g.kv_heads * g.dim;
  const int64_t values = g.num_blocks * g.block_size * token;  // cache.stride(0)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = qkv + r * width;
    const float* cos = cos_sin + positions[r] * g.dim;
    const float* sin = cos + half;
    for (int64_t h = 0; h < g.heads + g.kv_heads; ++h) {
      float* x = row + h * g.dim;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * cos[i] + x2 * -sin[i];
        x[i + half] = x2 * cos[i] + x1 * sin[i];
      }
    }
    const float* k = row + g.heads * g.dim;
    std::copy(k, k + token, cache + slots[r] * token);
    std::copy(k + token, k + 2 * token, cache + values + slots[r] * token);
  }
}

#ifdef __AVX512F__
// One row's G query heads that share a KV head, head_dim 16 V, against its len keys and values
// (`keys`, `vals`: the cache at this KV head; token j at (table[j / bs] bs + j % bs) token):
// q and, over the values, the G x V accumulators stay in registers and each key and value is
// loaded once for the G heads (the loop below reloaded and stored its accumulators a head).
// scores: [G, stride] scratch; out: the G heads' outputs, contiguous.
template <int G, int V>
void head_group(const float* q, const float* keys, const float* vals, const int32_t* table,
                int64_t bs, int64_t token, int64_t len, float scale, float* scores,
                int64_t stride, float* out) {
  __m512 qv[G][V], acc[G][V];
  for (int h = 0; h < G; ++h)
    for (int v = 0; v < V; ++v) qv[h][v] = _mm512_loadu_ps(q + h * 16 * V + 16 * v);
  float top[G], total[G];
  for (int h = 0; h < G; ++h) top[h] = -INFINITY;
  for (int64_t j = 0; j < len; ++j) {
    const float* k = keys + (table[j / bs] * bs + j % bs) * token;
    for (int h = 0; h < G; ++h) {
      __m512 p = _mm512_mul_ps(qv[h][0], _mm512_loadu_ps(k));
      for (int v = 1; v < V; ++v) p = _mm512_fmadd_ps(qv[h][v], _mm512_loadu_ps(k + 16 * v), p);
      const float sc = _mm512_reduce_add_ps(p) * scale;
      scores[h * stride + j] = sc;
      top[h] = std::max(top[h], sc);
    }
  }
  for (int h = 0; h < G; ++h) {
    total[h] = exp_shifted(scores + h * stride, len, top[h]);
    for (int v = 0; v < V; ++v) acc[h][v] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < len; ++j) {
    const float* x = vals + (table[j / bs] * bs + j % bs) * token;
    __m512 xv[V];
    for (int v = 0; v < V; ++v) xv[v] = _mm512_loadu_ps(x + 16 * v);
    for (int h = 0; h < G; ++h) {
      const __m512 p = _mm512_set1_ps(scores[h * stride + j]);
      for (int v = 0; v < V; ++v) acc[h][v] = _mm512_fmadd_ps(p, xv[v], acc[h][v]);
    }
  }
  for (int h = 0; h < G; ++h) {
    const __m512 inv = _mm512_set1_ps(1.f / total[h]);
    for (int v = 0; v < V; ++v)
      _mm512_storeu_ps(out + h * 16 * V + 16 * v, _mm512_mul_ps(acc[h][v], inv));
  }
}

using HeadGroupFn = decltype(&head_group<1, 1>);

// head_group for `group` query heads a KV head of `dim`, or nullptr (the loop below then).
HeadGroupFn pick_head_group(int64_t group, int64_t dim) {
#define HEAD_GROUP(G, V) if (group == G && dim == 16 * V) return &head_group<G, V>;
  HEAD_GROUP(1, 1) HEAD_GROUP(2, 1) HEAD_GROUP(3, 1) HEAD_GROUP(4, 1)
  HEAD_GROUP(1, 4) HEAD_GROUP(2, 4) HEAD_GROUP(3, 4) HEAD_GROUP(4, 4)
  HEAD_GROUP(1, 8) HEAD_GROUP(2, 8)
#undef HEAD_GROUP
  return nullptr;
}
#else
using HeadGroupFn = void (*)();
HeadGroupFn pick_head_group(int64_t, int64_t) { return nullptr; }
#endif

// One query row per (row, head) against the row's context, read through its block table.
// Parallel over (row, span of KV heads): one span of all KV heads a row from 4 rows (each
// token's keys then stream contiguously), one KV head a task below. Each key and value is read
// once for all the query heads that share it.
void attention(const float* qkv, float* out, int64_t rows, const Geometry& g, const float* cache,
               const int32_t* tables, const int32_t* seq_lens) {
  const int64_t width = (g.heads + 2 * g.kv_heads) * g.dim, group = g.heads / g.kv_heads;
  const int64_t token = g.kv_heads * g.dim, dim = g.dim, bs = g.block_size;
  const int64_t values = g.num_blocks * bs * token;
  const int64_t span = rows >= 4 ? g.kv_heads : 1, spans = g.kv_heads / span;
  int64_t longest = 1;
  for (int64_t r = 0; r < rows; ++r) longest = std::max<int64_t>(longest, seq_lens[r]);
  const int64_t heads = span * group;  // query heads a task
  const int64_t grain = std::max<int64_t>(1, 8192 / (longest * dim * heads));
  [[maybe_unused]] const HeadGroupFn head_fn = pick_head_group(group, dim);
  at::parallel_for(0, rows * spans, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(heads * longest), acc(heads * dim), top(heads), total(heads);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / spans, kv0 = (task % spans) * span, len = seq_lens[r];
      const float* q = qkv + r * width + kv0 * group * dim;  // the span's query heads
      const int32_t* table = tables + r * g.table_width;
#ifdef __AVX512F__
      if (head_fn != nullptr) {
        for (int64_t kv = kv0; kv < kv0 + span; ++kv) {
          head_fn(qkv + r * width + kv * group * dim, cache + kv * dim, cache + values + kv * dim,
                  table, bs, token, len, g.scale, scores.data(), longest,
                  out + r * g.heads * dim + kv * group * dim);
        }
        continue;
      }
#endif
      std::fill(top.begin(), top.end(), -INFINITY);
      for (int64_t j0 = 0; j0 < len; j0 += bs) {
        const float* keys = cache + (table[j0 / bs] * bs) * token + kv0 * dim;
        for (int64_t t = 0, n = std::min(bs, len - j0); t < n; ++t) {
          for (int64_t h = 0; h < heads; ++h) {
            const float s = dot(q + h * dim, keys + t * token + (h / group) * dim, dim) * g.scale;
            scores[h * longest + j0 + t] = s;
            top[h] = std::max(top[h], s);
          }
        }
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t h = 0; h < heads; ++h) {
        total[h] = exp_shifted(scores.data() + h * longest, len, top[h]);
      }
      for (int64_t j0 = 0; j0 < len; j0 += bs) {
        const float* vals = cache + values + (table[j0 / bs] * bs) * token + kv0 * dim;
        for (int64_t t = 0, n = std::min(bs, len - j0); t < n; ++t) {
          for (int64_t h = 0; h < heads; ++h) {
            const float p = scores[h * longest + j0 + t];
            const float* v = vals + t * token + (h / group) * dim;
            float* a = acc.data() + h * dim;
            for (int64_t d = 0; d < dim; ++d) a[d] += p * v[d];
          }
        }
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* o = out + r * g.heads * dim + (kv0 * group + h) * dim;
        for (int64_t d = 0; d < dim; ++d) o[d] = acc[h * dim + d] / total[h];
      }
    }
  });
}

Tensor decode_step(const Tensor& hidden, const Tensor& positions, const Tensor& cos_sin,
                   at::TensorList caches, const Tensor& slots, const Tensor& block_tables,
                   const Tensor& seq_lens, at::TensorList norms, at::TensorList weights,
                   at::TensorList scales_zeros, at::IntArrayRef pairs, const Tensor& final_norm,
                   double eps, int64_t heads, int64_t kv_heads, int64_t dim, double scale,
                   int64_t rows_min) {
  check_f32(hidden, "hidden", 2);
  const int64_t rows = hidden.size(0), width = hidden.size(1);
  const int64_t layers = static_cast<int64_t>(caches.size());
  TORCH_CHECK(rows >= 1 && layers >= 1, "decode_step needs rows and layers");
  TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && dim > 0 && dim % 2 == 0,
              "bad head geometry");
  TORCH_CHECK(static_cast<int64_t>(norms.size()) == 2 * layers &&
              static_cast<int64_t>(weights.size()) == 4 * layers &&
              static_cast<int64_t>(scales_zeros.size()) == 4 * layers &&
              static_cast<int64_t>(pairs.size()) == 4 * layers,
              "per layer: 2 norms and 4 projections expected");
  for (const auto& t : {positions, slots}) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.is_contiguous() &&
                t.dim() == 1 && t.size(0) == rows, "positions and slots: [M] int64 expected");
  }
  TORCH_CHECK(seq_lens.device().is_cpu() && seq_lens.scalar_type() == at::kInt &&
              seq_lens.is_contiguous() && seq_lens.dim() == 1 && seq_lens.size(0) == rows,
              "seq_lens: [M] int32 expected");
  TORCH_CHECK(block_tables.device().is_cpu() && block_tables.scalar_type() == at::kInt &&
              block_tables.is_contiguous() && block_tables.dim() == 2 &&
              block_tables.size(0) == rows, "block_tables: [M, blocks] int32 expected");
  check_f32(cos_sin, "cos_sin", 2);
  TORCH_CHECK(cos_sin.size(1) == dim, "cos_sin must be [positions, head_dim]");
  check_f32(final_norm, "final_norm", 1);
  TORCH_CHECK(final_norm.size(0) == width, "final_norm width");

  const Tensor& first = caches[0];
  check_f32(first, "kv cache", 5);
  TORCH_CHECK(first.size(0) == 2 && first.size(3) == kv_heads && first.size(4) == dim,
              "kv cache must be [2, blocks, block_size, Hkv, D]");
  Geometry g{heads, kv_heads, dim, first.size(2), first.size(1), block_tables.size(1),
             static_cast<float>(scale)};
  for (const auto& c : caches) {
    check_f32(c, "kv cache", 5);
    TORCH_CHECK(c.sizes() == first.sizes(), "every layer's kv cache must have one shape");
  }
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(pos[r] >= 0 && pos[r] < cos_sin.size(0), "position ", pos[r], " out of range");
    TORCH_CHECK(slot[r] >= 0 && slot[r] < g.num_blocks * g.block_size, "slot out of range");
    TORCH_CHECK(lens[r] >= 1 && (lens[r] + g.block_size - 1) / g.block_size <= g.table_width,
                "context length ", lens[r], " does not fit the block table");
    for (int64_t b = 0; b < (lens[r] + g.block_size - 1) / g.block_size; ++b) {
      const int32_t id = tables[r * g.table_width + b];
      TORCH_CHECK(id >= 0 && id < g.num_blocks, "block id ", id, " out of range");
    }
    TORCH_CHECK(slot[r] / g.block_size == tables[r * g.table_width + (lens[r] - 1) / g.block_size],
                "a row's slot must be in the block of its last position");
  }

  const int64_t q_width = heads * dim, qkv_width = (heads + 2 * kv_heads) * dim;
  std::vector<Proj> projs;
  for (int64_t l = 0; l < layers; ++l) {
    for (const auto* n : {&norms[2 * l], &norms[2 * l + 1]}) {
      check_f32(*n, "norm weight", 1);
      TORCH_CHECK(n->size(0) == width, "norm width");
    }
    projs.push_back(make_proj(weights[4 * l], scales_zeros[4 * l], pairs[4 * l], width, "qkv"));
    projs.push_back(make_proj(weights[4 * l + 1], scales_zeros[4 * l + 1], pairs[4 * l + 1],
                              q_width, "o"));
    projs.push_back(make_proj(weights[4 * l + 2], scales_zeros[4 * l + 2], pairs[4 * l + 2],
                              width, "gate_up"));
    const int64_t inter = projs.back().out / 2;
    projs.push_back(make_proj(weights[4 * l + 3], scales_zeros[4 * l + 3], pairs[4 * l + 3],
                              inter, "down"));
    TORCH_CHECK(projs[4 * l].out == qkv_width && projs[4 * l + 1].out == width &&
                projs[4 * l + 2].out == 2 * inter && projs[4 * l + 3].out == width,
                "layer ", l, ": projection widths do not chain");
  }

  // int4_rows.h's kernel for every projection: where it is built, from rows_min rows (0:
  // never), on weights in ATen's AVX-512 layout (the caller's word) of whole 64-column blocks.
  bool fast = cormorant_int4::kInt4Rows && rows_min > 0 && rows >= rows_min;
  for (const Proj& p : projs) {
    fast = fast && p.out % cormorant_int4::kBlockCols == 0 && p.weight.scalar_type() == at::kByte &&
           p.weight.is_contiguous() && p.scales_zeros.is_contiguous();
  }
  Tensor total_t = hidden.clone();
  float* total = total_t.data_ptr<float>();
  std::vector<float> normed(rows * width), qkv(rows * qkv_width), attn(rows * q_width);
  std::vector<float> proj_out(rows * width), gate_up, act;
  for (int64_t l = 0; l < layers; ++l) {
    const Proj* p = &projs[4 * l];
    float* cache = caches[l].data_ptr<float>();
    rms_norm(total, norms[2 * l].data_ptr<float>(), normed.data(), rows, width, eps);
    run_proj(p[0], to_input(p[0], normed.data(), rows), qkv.data(), rows, fast);
    rotate_and_write(qkv.data(), rows, g, cos_sin.data_ptr<float>(), pos, slot, cache);
    attention(qkv.data(), attn.data(), rows, g, cache, tables, lens);
    run_proj(p[1], to_input(p[1], attn.data(), rows), proj_out.data(), rows, fast);
    for (int64_t i = 0; i < rows * width; ++i) total[i] += proj_out[i];
    rms_norm(total, norms[2 * l + 1].data_ptr<float>(), normed.data(), rows, width, eps);
    const int64_t inter = p[3].in;
    gate_up.resize(rows * 2 * inter);
    act.resize(rows * inter);
    run_proj(p[2], to_input(p[2], normed.data(), rows), gate_up.data(), rows, fast);
    for (int64_t r = 0; r < rows; ++r) {
      const float* gr = gate_up.data() + r * 2 * inter;
      silu_mul(gr, gr + inter, act.data() + r * inter, inter);
    }
    run_proj(p[3], to_input(p[3], act.data(), rows), proj_out.data(), rows, fast);
    for (int64_t i = 0; i < rows * width; ++i) total[i] += proj_out[i];
  }
  Tensor out = at::empty({rows, width}, hidden.options());
  rms_norm(total, final_norm.data_ptr<float>(), out.data_ptr<float>(), rows, width, eps);
  return out;
}

// x [M, K] bf16 times one int4 weight in ATen's AVX-512 layout -> [M, N] float32 (of bf16
// values): int4_rows.h's kernel alone, for the LM head and the tests.
Tensor int4_rows(const Tensor& x, const Tensor& weight, const Tensor& scales_zeros) {
  TORCH_CHECK(cormorant_int4::kInt4Rows, "int4_rows: not built for this CPU (AVX512_BF16)");
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.is_contiguous() &&
              x.dim() == 2, "int4_rows: x must be a contiguous [M, K] bf16 CPU tensor");
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kByte &&
              weight.is_contiguous() && weight.dim() == 2, "int4_rows: packed [N, K/2] uint8");
  const Proj p = make_proj(weight, scales_zeros, 0, x.size(1), "int4_rows");
  TORCH_CHECK(scales_zeros.is_contiguous() && p.out % cormorant_int4::kBlockCols == 0,
              "int4_rows: contiguous scales_zeros and whole blocks of 64 columns expected");
  Tensor y = at::empty({x.size(0), p.out}, x.options().dtype(at::kFloat));
  cormorant_int4::int4_rows(x.data_ptr<bf16>(), x.size(0), x.size(1), weight.data_ptr<uint8_t>(),
                            scales_zeros.data_ptr<bf16>(), p.out, y.data_ptr<float>());
  return y;
}

// W^T [K (K / 2 for a pair), N] bf16 of one packed int4 weight in ATen's AVX-512 layout
// (int4_rows.h's int4_dequant_t): the dense path's weight for a call of many rows.
Tensor int4_dequant_t(const Tensor& weight, const Tensor& scales_zeros, bool pair) {
  TORCH_CHECK(cormorant_int4::kInt4Rows, "int4_dequant_t: not built for this CPU (AVX512_BF16)");
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kByte &&
              weight.is_contiguous() && weight.dim() == 2, "int4_dequant_t: packed [N, K/2] uint8");
  TORCH_CHECK(scales_zeros.is_contiguous(), "int4_dequant_t: contiguous scales_zeros expected");
  const int64_t k = weight.size(1) * 2;
  const Proj p = make_proj(weight, scales_zeros, pair, pair ? k / 2 : k, "int4_dequant_t");
  TORCH_CHECK(p.out % cormorant_int4::kBlockCols == 0, "int4_dequant_t: blocks of 64 columns");
  Tensor w_t = at::empty({p.in, p.out}, weight.options().dtype(at::kBFloat16));
  cormorant_int4::int4_dequant_t(weight.data_ptr<uint8_t>(), scales_zeros.data_ptr<bf16>(), k,
                                 p.out, pair, w_t.data_ptr<bf16>());
  return w_t;
}

// x [M, K] bf16 times W^T, W [N, K] bf16 packed [N / 64, K / 2, 64, 2] (bf16_rows.h)
// -> [M, N] float32: the LM head's scoring of a decode batch.
Tensor bf16_rows(const Tensor& x, const Tensor& packed) {
  TORCH_CHECK(cormorant_int4::kInt4Rows, "bf16_rows: not built for this CPU (AVX512_BF16)");
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.is_contiguous() &&
              x.dim() == 2, "bf16_rows: x must be a contiguous [M, K] bf16 CPU tensor");
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == at::kBFloat16 &&
              packed.is_contiguous() && packed.dim() == 4 && packed.size(2) == 64 &&
              packed.size(3) == 2 && packed.size(1) * 2 == x.size(1),
              "bf16_rows: packed [N / 64, K / 2, 64, 2] bf16 expected for x's K");
  const int64_t n = packed.size(0) * 64;
  Tensor y = at::empty({x.size(0), n}, x.options().dtype(at::kFloat));
  cormorant_int4::bf16_rows(x.data_ptr<bf16>(), x.size(0), x.size(1), packed.data_ptr<bf16>(),
                            n, y.data_ptr<float>());
  return y;
}

}  // namespace

TORCH_LIBRARY(cormorant_cpu, m) {
  m.def("decode_step(Tensor hidden, Tensor positions, Tensor cos_sin, Tensor(a!)[] caches, "
        "Tensor slots, Tensor block_tables, Tensor seq_lens, Tensor[] norms, Tensor[] weights, "
        "Tensor[] scales_zeros, int[] pairs, Tensor final_norm, float eps, int heads, "
        "int kv_heads, int dim, float scale, int rows_min) -> Tensor");
  m.impl("decode_step", c10::DispatchKey::CPU, &decode_step);
  m.def("int4_rows(Tensor x, Tensor weight, Tensor scales_zeros) -> Tensor");
  m.impl("int4_rows", c10::DispatchKey::CPU, &int4_rows);
  m.def("int4_rows_built() -> bool", [] { return cormorant_int4::kInt4Rows; });
  m.def("int4_dequant_t(Tensor weight, Tensor scales_zeros, bool pair) -> Tensor");
  m.impl("int4_dequant_t", c10::DispatchKey::CPU, &int4_dequant_t);
  m.def("bf16_rows(Tensor x, Tensor packed) -> Tensor");
  m.impl("bf16_rows", c10::DispatchKey::CPU, &bf16_rows);
}
