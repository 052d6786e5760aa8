// Linear layers on F16 / BF16 weights kept as stored (a GGUF file's F16/BF16 tensors, a Hugging
// Face checkpoint's float16/bfloat16 ones): rows of uint16, converted to float32 as they are read
// (F16C for F16, a 16-bit shift for BF16), multiplied with float32 FMAs against float32
// activations. Included by quant_cpu.h (it uses gq::Isa), so matmul_parts can mix these parts
// with block-format ones in one fused projection.
//
// Unlike ggml-cpu on x86, which first rounds the activations to the weight's type (F16, or
// BF16's 8-bit mantissa) to use its F16/BF16 dot products, the activations stay float32: the
// product is the float32 product of the exact weights, what `--dtype float32` computes with the
// same weights, for the same cost (the weights' conversion is the work; the activations' would
// be extra).
//
// One GEMM shape, as for the block formats: a tile of RM activation rows x RN weight rows, each
// weight vector converted once and used RM times; output rows split across threads; activations
// taken a cache-sized block at a time, so the weights stream from memory once per block of 66
// tokens. Variants: AVX2 + F16C + FMA, and portable scalar code (gq::current_isa() chooses; an
// AVX-512 machine runs the AVX2 one).
#pragma once

namespace gq {

namespace half {

// y[t, n] for weight rows n0..n1: the portable variant, one converted weight row at a time.
inline void gemm_scalar(int64_t type, const float* x, int64_t T, int64_t K, const uint16_t* w, int64_t ldw,
                        int64_t n0, int64_t n1, float* y, int64_t ldy) {
  std::vector<float> row(K);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t k = 0; k < K; ++k) row[k] = half_to_float(type, w[n * ldw + k]);
    for (int64_t t = 0; t < T; ++t) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += row[k] * x[t * K + k];
      y[t * ldy + n] = acc;
    }
  }
}

}  // namespace half
}  // namespace gq

#ifdef GQ_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace gq {
namespace half {
namespace avx2 {

// 16 registers: a 3 x 4 tile of accumulators, the 3 activation vectors and one converted weight
// vector at a time (7 loads and 4 conversions per 12 FMAs)
constexpr int RM = 3, RN = 4, LANES = 8;
// activations handled per pass: a block of at most MB rows x 64k values (256 KB) stays in L2 while
// every weight row of the thread's share streams past it once. Few rows take whole rows of weights
// at a time (a decode: a piece of each row per pass would defeat the prefetcher).
constexpr int64_t MB = 66, BLOCK_VALUES = 65536;

template <int64_t TYPE>
inline __m256 load_w(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (TYPE == F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));  // bf16 = float's top half
}

inline float hsum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// M activation rows (from m0) x N weight rows (from n0) over columns k0..k1: written to y at
// the first block of columns, added after.
template <int64_t TYPE, int M, int N>
inline void tile(const float* x, int64_t K, const uint16_t* w, int64_t ldw, int64_t m0, int64_t n0, int64_t k0,
                 int64_t k1, float* y, int64_t ldy) {
  __m256 acc[M][N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) acc[m][n] = _mm256_setzero_ps();
  const int64_t kv = k1 - (k1 - k0) % LANES;
  for (int64_t k = k0; k < kv; k += LANES) {
    __m256 xv[M];
    for (int m = 0; m < M; ++m) {
      xv[m] = _mm256_loadu_ps(x + (m0 + m) * K + k);
      asm("" : "+x"(xv[m]));  // keep it in a register: GCC would fold the load into all N FMAs
    }
    for (int n = 0; n < N; ++n) {
      const __m256 wv = load_w<TYPE>(w + (n0 + n) * ldw + k);
      for (int m = 0; m < M; ++m) acc[m][n] = _mm256_fmadd_ps(wv, xv[m], acc[m][n]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float sum = hsum(acc[m][n]);
      for (int64_t k = kv; k < k1; ++k) sum += half_to_float(TYPE, w[(n0 + n) * ldw + k]) * x[(m0 + m) * K + k];
      float& out = y[(m0 + m) * ldy + n0 + n];
      out = k0 == 0 ? sum : out + sum;
    }
}

// Activation rows m0..m1 against weight rows n..n+N, columns k0..k1.
template <int64_t TYPE, int N>
inline void rows(const float* x, int64_t m0, int64_t m1, int64_t K, int64_t k0, int64_t k1, const uint16_t* w,
                 int64_t ldw, int64_t n, float* y, int64_t ldy) {
  int64_t m = m0;
  for (; m + RM <= m1; m += RM) tile<TYPE, RM, N>(x, K, w, ldw, m, n, k0, k1, y, ldy);
  switch (m1 - m) {  // RM is 3
    case 2: tile<TYPE, 2, N>(x, K, w, ldw, m, n, k0, k1, y, ldy); break;
    case 1: tile<TYPE, 1, N>(x, K, w, ldw, m, n, k0, k1, y, ldy); break;
  }
}

template <int64_t TYPE>
inline void gemm_t(const float* x, int64_t T, int64_t K, const uint16_t* w, int64_t ldw, int64_t n0, int64_t n1,
                   float* y, int64_t ldy) {
  const int64_t kb = std::max<int64_t>(LANES, BLOCK_VALUES / std::min(T, MB) / LANES * LANES);
  for (int64_t m0 = 0; m0 < T; m0 += MB) {
    const int64_t m1 = std::min(T, m0 + MB);
    for (int64_t k0 = 0; k0 < K; k0 += kb) {
      const int64_t k1 = std::min(K, k0 + kb);
      int64_t n = n0;
      for (; n + RN <= n1; n += RN) rows<TYPE, RN>(x, m0, m1, K, k0, k1, w, ldw, n, y, ldy);
      for (; n < n1; ++n) rows<TYPE, 1>(x, m0, m1, K, k0, k1, w, ldw, n, y, ldy);
    }
  }
}

// Output columns n0..n1 of y (T, ldy) for weight rows (uint16, ldw apart) of `type`.
inline void gemm(int64_t type, const float* x, int64_t T, int64_t K, const uint16_t* w, int64_t ldw, int64_t n0,
                 int64_t n1, float* y, int64_t ldy) {
  if (type == F16) gemm_t<F16>(x, T, K, w, ldw, n0, n1, y, ldy);
  else gemm_t<BF16>(x, T, K, w, ldw, n0, n1, y, ldy);
}

}  // namespace avx2
}  // namespace half
}  // namespace gq
#pragma GCC pop_options
#endif

namespace gq {
namespace half {

// y (T, ldy) columns [n0, n1) = x (T, K) W^T for W (n, ldw) uint16 rows of `type` (F16 or BF16);
// n0 a multiple of 4 (whole tiles).
inline void rows(int64_t type, const float* x, int64_t T, int64_t K, const uint16_t* w, int64_t ldw, int64_t n0,
                 int64_t n1, float* y, int64_t ldy, Isa isa) {
  switch (isa) {
#ifdef GQ_X86
    case Isa::avx512:  // (no 512-bit variant yet: the AVX2 one runs there)
    case Isa::avx2: return avx2::gemm(type, x, T, K, w, ldw, n0, n1, y, ldy);
#endif
    default: gemm_scalar(type, x, T, K, w, ldw, n0, n1, y, ldy);
  }
}

}  // namespace half
}  // namespace gq
