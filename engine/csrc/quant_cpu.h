// Linear layers on GGUF block formats, weights kept as the file's bytes (engine/csrc/llama_cpu.cpp
// includes this file; Python reaches it through quant_matmul / quant_dequantize for tests and for
// the layers outside the C++ stack).
//
// The arithmetic is ggml-cpu's for the same file (ggml/src/ggml-cpu/quants.c and arch/x86/quants.c):
// activations are quantized per block of 32 to 8 bits (scale d = amax / 127 stored as fp16, values
// round-to-nearest-even of x * 127 / amax, as x86's quantize_row_q8_0/q8_1), each block's dot
// product is an exact integer sum, then one float multiply by the two scales:
//   Q8_0 x Q8_0:  d_w d_x sum(w_i x_i)
//   Q4_0 x Q8_0:  d_w d_x sum((w_i - 8) x_i)                   (w_i in 0..15)
//   Q4_1 x Q8_1:  d_w d_x sum(w_i x_i) + m_w s_x               (s_x = fp16(d_x sum(x_i)), Q8_1's term)
// Only the order in which the per-block floats are added differs from ggml (8 lanes, then a sum).
//
// One GEMM shape for every ISA (after llamafile's tinyBLAS): a tile of RM activation rows x RN
// weight rows; each weight block is unpacked once and used RM times; output rows split across
// threads with at::parallel_for. Variants: AVX2 (maddubs), AVX-512 VNNI (vpdpbusd, 256-bit) and
// a portable scalar one, compiled in one binary (#pragma GCC target) and chosen at run time from
// the CPU's features, or forced by set_isa() (GPTSERVE_CPU_ISA, read in engine/layers/cpu_kernels.py).
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define GQ_X86 1
#endif

namespace gq {

using at::Tensor;

// ggml_type ids (ggml.h)
enum Type : int64_t { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, BF16 = 30 };

constexpr int64_t QK = 32;

inline bool is_native(int64_t type) { return type == Q4_0 || type == Q4_1 || type == Q8_0; }

inline int64_t block_bytes(int64_t type) {
  switch (type) {
    case Q4_0: return 18;
    case Q4_1: return 20;
    case Q8_0: return 34;
    default: TORCH_CHECK(false, "ggml type ", type, " has no native kernel (supported: Q4_0, Q4_1, Q8_0)");
  }
  return 0;
}

inline float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return c10::detail::fp16_ieee_to_fp32_value(h);
}
inline float round_fp16(float x) {
  return c10::detail::fp16_ieee_to_fp32_value(c10::detail::fp16_ieee_from_fp32_value(x));
}

// Activations quantized per block of 32: Q8_0 (qs, d) plus Q8_1's s, and the integer block sums.
struct QActs {
  int64_t T = 0, K = 0, nb = 0;
  std::vector<int8_t> qs;    // (T, K)
  std::vector<float> d;      // (T, nb) the fp16 scale, as float
  std::vector<float> s;      // (T, nb) fp16(d * sum(qs)), Q8_1's term
  std::vector<int32_t> sum;  // (T, nb) sum(qs)
};

inline void quantize_acts(const float* x, int64_t T, int64_t K, QActs& a) {
  TORCH_CHECK(K % QK == 0, "in_features ", K, " is not a multiple of 32");
  a.T = T, a.K = K, a.nb = K / QK;
  a.qs.resize(T * K);
  a.d.resize(T * a.nb);
  a.s.resize(T * a.nb);
  a.sum.resize(T * a.nb);
  at::parallel_for(0, T * a.nb, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* v = x + i * QK;  // rows are contiguous, so block i of the (T, K) matrix
      float amax = 0.f;
      for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(v[j]));
      const float d = amax / 127.f;
      const float id = amax != 0.f ? 127.f / amax : 0.f;
      int32_t sum = 0;
      int8_t* q = a.qs.data() + i * QK;
      for (int j = 0; j < QK; ++j) {
        const int32_t qi = static_cast<int32_t>(std::nearbyint(v[j] * id));  // ties to even, as _mm256_round_ps
        q[j] = static_cast<int8_t>(qi);
        sum += qi;
      }
      a.d[i] = round_fp16(d);
      a.s[i] = round_fp16(d * static_cast<float>(sum));
      a.sum[i] = sum;
    }
  });
}

// ---- portable scalar kernel -------------------------------------------------------------------

inline float block_dot_scalar(int64_t type, const uint8_t* w, const QActs& a, int64_t t, int64_t b) {
  const int8_t* x = a.qs.data() + t * a.K + b * QK;
  const int64_t ib = t * a.nb + b;
  int32_t sumi = 0;
  switch (type) {
    case Q8_0: {
      const int8_t* q = reinterpret_cast<const int8_t*>(w + 2);
      for (int j = 0; j < QK; ++j) sumi += q[j] * x[j];
      return h2f(w) * a.d[ib] * static_cast<float>(sumi);
    }
    case Q4_0: {
      const uint8_t* q = w + 2;
      for (int j = 0; j < QK / 2; ++j) sumi += ((q[j] & 15) - 8) * x[j] + ((q[j] >> 4) - 8) * x[j + 16];
      return h2f(w) * a.d[ib] * static_cast<float>(sumi);
    }
    case Q4_1: {
      const uint8_t* q = w + 4;
      for (int j = 0; j < QK / 2; ++j) sumi += (q[j] & 15) * x[j] + (q[j] >> 4) * x[j + 16];
      return h2f(w) * a.d[ib] * static_cast<float>(sumi) + h2f(w + 2) * a.s[ib];
    }
  }
  return 0.f;
}

inline void gemm_scalar(int64_t type, const QActs& a, const uint8_t* w, int64_t row_bytes, int64_t n0, int64_t n1,
                        float* y, int64_t ldy) {
  const int64_t bb = block_bytes(type);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t t = 0; t < a.T; ++t) {
      float acc = 0.f;
      for (int64_t b = 0; b < a.nb; ++b) acc += block_dot_scalar(type, w + n * row_bytes + b * bb, a, t, b);
      y[t * ldy + n] = acc;
    }
}

}  // namespace gq

// ---- SIMD kernels: one body, compiled once per ISA ---------------------------------------------
#ifdef GQ_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define GQ_NS avx2
#define GQ_DOT_U8S8(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1))
#include "quant_gemm_simd.inc"
#undef GQ_DOT_U8S8
#undef GQ_NS
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")
#define GQ_NS avx512
#define GQ_DOT_U8S8(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (s))
#include "quant_gemm_simd.inc"
#undef GQ_DOT_U8S8
#undef GQ_NS
#pragma GCC pop_options
#endif

namespace gq {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };

inline bool isa_supported(Isa isa) {
#ifdef GQ_X86
  if (isa == Isa::avx2)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (isa == Isa::avx512)
    return isa_supported(Isa::avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
#else
  if (isa != Isa::scalar) return false;
#endif
  return true;
}

inline Isa best_isa() {
  if (isa_supported(Isa::avx512)) return Isa::avx512;
  if (isa_supported(Isa::avx2)) return Isa::avx2;
  return Isa::scalar;
}

inline Isa& current_isa() {
  static Isa isa = best_isa();
  return isa;
}

inline const char* isa_name(Isa isa) {
  return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "scalar";
}

inline Isa parse_isa(const std::string& name) {
  if (name.empty() || name == "auto") return best_isa();
  Isa isa;
  if (name == "avx512") isa = Isa::avx512;
  else if (name == "avx2") isa = Isa::avx2;
  else if (name == "scalar") isa = Isa::scalar;
  else TORCH_CHECK(false, "unknown CPU ISA '", name, "' (auto, avx512, avx2, scalar)");
  TORCH_CHECK(isa_supported(isa), "this CPU cannot run the ", name, " kernels");
  return isa;
}

// The variant every later call uses ("auto": the widest this CPU runs); returns its name.
inline std::string set_isa(const std::string& name) {
  current_isa() = parse_isa(name);
  return isa_name(current_isa());
}

inline std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512})
    if (isa_supported(isa)) out.push_back(isa_name(isa));
  return out;
}

}  // namespace gq

#include "half_cpu.h"  // F16 / BF16 parts (it uses Isa, above)

namespace gq {

// y (T, sum N_i) = x (T, K) [W_0; W_1; ...]^T for W_i (N_i, row bytes) raw blocks of types[i]:
// a fused projection (q/k/v, gate/up) kept as the file's separate tensors, each part in its own
// format, the activations quantized once (F16 / BF16 parts: half_cpu.h, on the float32 activations).
inline Tensor matmul_parts(const Tensor& x_in, const std::vector<Tensor>& ws, const std::vector<int64_t>& types,
                           const std::vector<int64_t>& ns, int64_t K, Isa isa) {
  TORCH_CHECK(ws.size() == types.size() && ws.size() == ns.size() && !ws.empty(), "one type and size per part");
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == K, "x must be (T, ", K, ")");
  int64_t N = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    const Tensor& w = ws[i];
    TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 2 && w.size(0) == ns[i],
                "w must be uint8 (", ns[i], ", row bytes)");
    const int64_t row_bytes = is_half(types[i]) ? 2 * K : K / QK * block_bytes(types[i]);
    TORCH_CHECK(w.size(1) == row_bytes, "w rows hold ", w.size(1), " bytes, expected ", row_bytes);
    TORCH_CHECK(w.stride(1) == 1, "w rows must be contiguous");
    N += ns[i];
  }
  const Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t T = x.size(0);
  Tensor y = at::empty({T, N}, x.options());
  if (T == 0) return y;
  QActs a;
  if (!std::all_of(types.begin(), types.end(), is_half)) quantize_acts(x.data_ptr<float>(), T, K, a);
  int64_t offset = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    const uint8_t* wp = ws[i].data_ptr<uint8_t>();
    const int64_t ldw = ws[i].stride(0), n = ns[i], type = types[i];
    float* yp = y.data_ptr<float>() + offset;
    if (is_half(type)) {
      half::matmul(type, x.data_ptr<float>(), T, K, reinterpret_cast<const uint16_t*>(wp), ldw / 2, n, yp, N, isa);
      offset += n;
      continue;
    }
    // tasks of whole 4-row tiles, each at least ~32k multiply-adds so threads pay for themselves
    const int64_t tiles = (n + 3) / 4;
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, 4 * K * T));
    at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
      const int64_t n0 = begin * 4, n1 = std::min(n, end * 4);
      switch (isa) {
#ifdef GQ_X86
        case Isa::avx512: avx512::gemm(type, a, wp, ldw, n0, n1, yp, N); break;
        case Isa::avx2: avx2::gemm(type, a, wp, ldw, n0, n1, yp, N); break;
#endif
        default: gemm_scalar(type, a, wp, ldw, n0, n1, yp, N);
      }
    });
    offset += n;
  }
  return y;
}

inline Tensor matmul(const Tensor& x, const Tensor& w, int64_t type, int64_t N, int64_t K, Isa isa) {
  return matmul_parts(x, {w}, {type}, {N}, K, isa);
}

// raw rows (R, row_bytes) -> float32 (R, K)
inline Tensor dequantize(const Tensor& w, int64_t type, int64_t K) {
  TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 2, "w must be uint8 (rows, row bytes)");
  const int64_t bb = block_bytes(type), nb = K / QK, R = w.size(0);
  TORCH_CHECK(K % QK == 0 && w.size(1) == nb * bb, "w rows do not hold ", K, " values of type ", type);
  const Tensor wc = w.contiguous();
  Tensor out = at::empty({R, K}, at::TensorOptions().dtype(at::kFloat));
  const uint8_t* wp = wc.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, R * nb, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* blk = wp + i * bb;
      float* o = op + i * QK;
      const float d = h2f(blk);
      if (type == Q8_0) {
        const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
        for (int j = 0; j < QK; ++j) o[j] = d * q[j];
      } else if (type == Q4_0) {
        for (int j = 0; j < QK / 2; ++j) {
          o[j] = d * ((blk[2 + j] & 15) - 8);
          o[j + 16] = d * ((blk[2 + j] >> 4) - 8);
        }
      } else {
        const float m = h2f(blk + 2);
        for (int j = 0; j < QK / 2; ++j) {
          o[j] = d * (blk[4 + j] & 15) + m;
          o[j + 16] = d * (blk[4 + j] >> 4) + m;
        }
      }
    }
  });
  return out;
}

}  // namespace gq
