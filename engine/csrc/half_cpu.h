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
// One GEMM shape (half_gemm_simd.inc), as for the block formats: a tile of RM activation rows x
// RN weight rows, each weight vector converted once and used RM times; output rows split across
// threads; the weights read once per call and the activations from cache.
#pragma once

namespace gq {

inline bool is_half(int64_t type) { return type == F16 || type == BF16; }

inline float half_to_float(int64_t type, uint16_t h) {
  if (type == F16) return c10::detail::fp16_ieee_to_fp32_value(h);
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

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
#define GH_NS avx2
#define GH_LANES 8
#include "half_gemm_simd.inc"
#undef GH_LANES
#undef GH_NS
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw")
#define GH_NS avx512
#define GH_LANES 16
#include "half_gemm_simd.inc"
#undef GH_LANES
#undef GH_NS
#pragma GCC pop_options
#endif

namespace gq {
namespace half {

// y (T, ldy) columns [0, n) = x (T, K) W^T for W (n, ldw) uint16 rows of `type` (F16 or BF16).
inline void matmul(int64_t type, const float* x, int64_t T, int64_t K, const uint16_t* w, int64_t ldw, int64_t n,
                   float* y, int64_t ldy, Isa isa) {
  // tasks of 12 rows (whole tiles of 3, 4 or 6), each at least ~32k multiply-adds so threads pay
  // for themselves
  constexpr int64_t unit = 12;
  const int64_t tasks = (n + unit - 1) / unit;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, unit * K * T));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    const int64_t n0 = begin * unit, n1 = std::min(n, end * unit);
    switch (isa) {
#ifdef GQ_X86
      case Isa::avx512: avx512::gemm(type, x, T, K, w, ldw, n0, n1, y, ldy); break;
      case Isa::avx2: avx2::gemm(type, x, T, K, w, ldw, n0, n1, y, ldy); break;
#endif
      default: gemm_scalar(type, x, T, K, w, ldw, n0, n1, y, ldy);
    }
  });
}

}  // namespace half
}  // namespace gq
