// Linear layers on GGUF block formats, weights kept as the file's bytes (engine/csrc/llama_cpu.cpp
// includes this file; Python reaches it through quant_matmul / quant_dequantize for tests and for
// the layers outside the C++ stack).
//
// The arithmetic is ggml-cpu's for the same file (ggml/src/ggml-cpu/quants.c and arch/x86/quants.c;
// the formats and the activations each pairs with: quant_formats.h): activations quantized per
// block to 8 bits, each block's dot product an exact integer sum, then one float multiply by the
// scales. Only the order in which the per-block floats are added differs from ggml.
//
// One GEMM shape for every ISA (after llamafile's tinyBLAS): a tile of activation rows x weight
// rows; each weight block is unpacked once and used for every activation row of the tile
// (quant_gemm_simd.inc for the 32-value formats, quant_gemm_k_simd.inc for the K formats); output
// rows split across the kernels' threads (thread_pool.h). The engine holds the 32-value formats
// and Q4_K interleaved 8 rows at a time (quant_formats.h; interleave() below, at load): their
// tiles are 4 activation rows x 8 weight rows, one register of 8 rows' integer dot products and
// their scales as a vector; rows as the file stores them stay supported (tests, Q5_K, Q6_K). Variants: AVX2 (maddubs), AVX-512 VNNI
// (vpdpbusd, 256-bit) and a portable scalar one, compiled in one binary (#pragma GCC target) and
// chosen at run time from the CPU's features, or forced by set_isa() (GPTSERVE_CPU_ISA, read in
// engine/layers/cpu_kernels.py).
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define GQ_X86 1
#endif

#include "quant_formats.h"
#include "thread_pool.h"

namespace gq {

using at::Tensor;

// ---- portable scalar kernel: each weight block unpacked once for all activation rows -----------

inline void gemm_scalar(int64_t type, const QActs& a, const QActsK& ak, const uint8_t* w, int64_t row_bytes,
                        int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const int64_t bb = block_bytes(type), T = is_k(type) ? ak.T : a.T, nb = is_k(type) ? ak.nb : a.nb;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = 0.f;
    for (int64_t b = 0; b < nb; ++b) {
      Unpacked u;
      unpack_block(type, w + n * row_bytes + b * bb, u);
      for (int64_t t = 0; t < T; ++t)
        y[t * ldy + n] += is_k(type) ? kblock_dot_scalar(u, ak, t, b) : block_dot_scalar(u, a, t, b);
    }
  }
}

// Interleaved weights (quant_formats.h), groups g0..g1 -> y's columns 8 g0 .. 8 g1: each row's
// integer block dot, then acc = fma(d_w d_x, dot, acc) (+ fma(m_w, s_x, acc)), the SIMD kernels'
// operations in their order, so every variant gives the same bits.
inline void gemm8_scalar(int64_t type, const QActs& a, const uint8_t* w, int64_t ldg, int64_t g0, int64_t g1, float* y,
                         int64_t ldy) {
  const int64_t bb = block_bytes(type), gb = IL * bb;
  std::vector<uint8_t> blocks(IL * bb);
  uint8_t* blks[IL];
  for (int j = 0; j < IL; ++j) blks[j] = blocks.data() + j * bb;
  std::vector<float> acc(a.T * IL);
  for (int64_t g = g0; g < g1; ++g) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t b = 0; b < a.nb; ++b) {
      regroup_block<false>(type, const_cast<uint8_t*>(w + g * ldg + b * gb), blks);
      for (int j = 0; j < IL; ++j) {
        Unpacked u;
        unpack_block(type, blks[j], u);
        for (int64_t t = 0; t < a.T; ++t) {
          const int8_t* x = a.qs.data() + t * a.K + b * QK;
          const int64_t ib = t * a.nb + b;
          int32_t dot = 0;
          for (int i = 0; i < QK; ++i) dot += u.q[i] * x[i];  // Q4_0, Q5_0: q - offset already
          float& r = acc[t * IL + j];
          r = std::fma(u.d * a.d[ib], static_cast<float>(dot), r);
          if (u.mn[0]) r = std::fma(-u.dmin, a.s[ib], r);
        }
      }
    }
    for (int64_t t = 0; t < a.T; ++t)
      for (int j = 0; j < IL; ++j) y[t * ldy + g * IL + j] = acc[t * IL + j];
  }
}

// Interleaved Q4_K (quant_formats.h), as quant_gemm_k_simd.inc's tile8_q4k computes it: per
// super-block the exact integers sum_j sc_j sum(q x) and sum_j m_j sum(x), then
// acc = fma(d_w d_x, sumi, acc), acc = fma(-(dmin_w d_x), summ, acc).
inline void gemm8_q4k_scalar(const QActsK& a, const uint8_t* w, int64_t ldg, int64_t g0, int64_t g1, float* y,
                             int64_t ldy) {
  const int64_t gb = interleaved_block_bytes(Q4_K);
  std::vector<float> acc(a.T * IL);
  for (int64_t g = g0; g < g1; ++g) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t b = 0; b < a.nb; ++b) {
      const uint8_t* blk = w + g * ldg + b * gb;
      for (int j = 0; j < IL; ++j) {
        const float d = h2f(blk + 2 * j), dmin = h2f(blk + 16 + 2 * j);
        for (int64_t t = 0; t < a.T; ++t) {
          const int8_t* x = a.qs.data() + t * a.K + b * QK_K;
          const int16_t* bsums = a.bsums.data() + (t * a.nb + b) * 16;
          int32_t sumi = 0, summ = 0;
          for (int k = 0; k < 8; ++k) {  // sub-block k: chunk k / 2, nibble half k % 2
            int32_t dot = 0;
            for (int r = 0; r < 8; ++r)
              for (int i = 0; i < 4; ++i) {
                const uint8_t byte = blk[160 + 256 * (k / 2) + 32 * r + 4 * j + i];
                dot += ((k % 2 ? byte >> 4 : byte) & 15) * x[32 * k + 4 * r + i];
              }
            sumi += blk[32 + 8 * k + j] * dot;
            summ += blk[96 + 8 * k + j] * (bsums[2 * k] + bsums[2 * k + 1]);
          }
          const float dx = a.d[t * a.nb + b];
          float& r = acc[t * IL + j];
          r = std::fma(d * dx, static_cast<float>(sumi), r);
          r = std::fma(-(dmin * dx), static_cast<float>(summ), r);
        }
      }
    }
    for (int64_t t = 0; t < a.T; ++t)
      for (int j = 0; j < IL; ++j) y[t * ldy + g * IL + j] = acc[t * IL + j];
  }
}

}  // namespace gq

// ---- SIMD kernels: one body, compiled once per ISA ---------------------------------------------
#ifdef GQ_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define GQ_NS avx2
#define GQ_VNNI 0
#define GQ_DOT_U8S8(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1))
#include "quant_gemm_simd.inc"
#include "quant_gemm_k_simd.inc"
#undef GQ_DOT_U8S8
#undef GQ_VNNI
#undef GQ_NS
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")
#define GQ_NS avx512
#define GQ_VNNI 1
#define GQ_DOT_U8S8(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (s))
#include "quant_gemm_simd.inc"
#include "quant_gemm_k_simd.inc"
#undef GQ_DOT_U8S8
#undef GQ_VNNI
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

// The activations quantized as the parts' formats need them, each kind once: Q8_0/Q8_1 for the
// 32-value formats, Q8_K for the K formats.
struct Acts {
  QActs q8;
  QActsK q8k;
};

// Output rows n0..n1 (of the part's w) into y's columns n0..n1; interleaved weights: whole groups
// of 8 rows (ldw: a group's bytes).
inline void gemm_part(Isa isa, int64_t type, const Acts& acts, const uint8_t* w, int64_t ldw, int64_t n0, int64_t n1,
                      float* y, int64_t ldy) {
  if (is_interleaved(type)) {
    const int64_t t = base_type(type), g0 = n0 / IL, g1 = n1 / IL;
    switch (isa) {
#ifdef GQ_X86
      case Isa::avx512:
        return t == Q4_K ? avx512::gemm8_q4k(acts.q8k, w, ldw, g0, g1, y, ldy)
                         : avx512::gemm8(t, acts.q8, w, ldw, g0, g1, y, ldy);
      case Isa::avx2:
        return t == Q4_K ? avx2::gemm8_q4k(acts.q8k, w, ldw, g0, g1, y, ldy)
                         : avx2::gemm8(t, acts.q8, w, ldw, g0, g1, y, ldy);
#endif
      default:
        return t == Q4_K ? gemm8_q4k_scalar(acts.q8k, w, ldw, g0, g1, y, ldy)
                         : gemm8_scalar(t, acts.q8, w, ldw, g0, g1, y, ldy);
    }
  }
  switch (isa) {
#ifdef GQ_X86
    case Isa::avx512:
      return is_k(type) ? avx512::gemm_k(type, acts.q8k, w, ldw, n0, n1, y, ldy)
                        : avx512::gemm(type, acts.q8, w, ldw, n0, n1, y, ldy);
    case Isa::avx2:
      return is_k(type) ? avx2::gemm_k(type, acts.q8k, w, ldw, n0, n1, y, ldy)
                        : avx2::gemm(type, acts.q8, w, ldw, n0, n1, y, ldy);
#endif
    default: gemm_scalar(type, acts.q8, acts.q8k, w, ldw, n0, n1, y, ldy);
  }
}

// y (T, sum N_i) = x (T, K) [W_0; W_1; ...]^T for W_i (N_i, row bytes) raw blocks of types[i]:
// a fused projection (q/k/v, gate/up) kept as the file's separate tensors, each part in its own
// format (Q4_K_M files mix Q4_K and Q6_K), the activations quantized once per kind (F16 / BF16
// parts: half_cpu.h, on the float32 activations).
inline Tensor matmul_parts(const Tensor& x_in, const std::vector<Tensor>& ws, const std::vector<int64_t>& types,
                           const std::vector<int64_t>& ns, int64_t K, Isa isa) {
  TORCH_CHECK(ws.size() == types.size() && ws.size() == ns.size() && !ws.empty(), "one type and size per part");
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == K, "x must be (T, ", K, ")");
  int64_t N = 0;
  bool needs_q8 = false, needs_q8k = false;
  for (size_t i = 0; i < ws.size(); ++i) {
    const Tensor& w = ws[i];
    const int64_t type = base_type(types[i]), group = is_interleaved(types[i]) ? IL : 1;
    check_row(type, K);
    TORCH_CHECK(!is_interleaved(types[i]) || can_interleave(type), "ggml type ", type, " has no interleaved kernel");
    TORCH_CHECK(ns[i] % group == 0, "interleaved weights hold whole groups of ", IL, " rows, not ", ns[i]);
    TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 2 && w.size(0) == ns[i] / group,
                "w must be uint8 (", ns[i] / group, ", ", group == 1 ? "row bytes)" : "8 x row bytes)");
    const int64_t row_bytes = K / block_values(type) * (group == 1 ? block_bytes(type) : interleaved_block_bytes(type));
    TORCH_CHECK(w.size(1) == row_bytes, "w rows hold ", w.size(1), " bytes, expected ", row_bytes);
    TORCH_CHECK(w.stride(1) == 1, "w rows must be contiguous");
    N += ns[i];
    if (is_k(type)) needs_q8k = true;
    else if (!is_half(type)) needs_q8 = true;
  }
  const Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t T = x.size(0);
  Tensor y = at::empty({T, N}, x.options());
  if (T == 0) return y;
  Acts acts;
  if (needs_q8) quantize_acts(x.data_ptr<float>(), T, K, acts.q8);
  if (needs_q8k) quantize_acts_k(x.data_ptr<float>(), T, K, acts.q8k);
  // One job for all the parts: tasks of whole 8-row groups, each ~64k multiply-adds or more so that
  // claiming one costs little beside it (a SmolLM2 decode step's fused q/k/v: 9 tasks).
  struct Task {
    const uint8_t* w;
    int64_t type, ldw, n0, n1;
    float* y;
  };
  std::vector<Task> tasks;
  const int64_t rows_per_task = std::max<int64_t>(IL, 65536 / std::max<int64_t>(1, K * T) / IL * IL);
  float* yp = y.data_ptr<float>();
  for (size_t i = 0; i < ws.size(); yp += ns[i], ++i)
    for (int64_t n0 = 0; n0 < ns[i]; n0 += rows_per_task)
      tasks.push_back({ws[i].data_ptr<uint8_t>(), types[i], ws[i].stride(0), n0, std::min(ns[i], n0 + rows_per_task), yp});
  const float* xp = x.data_ptr<float>();
  parallel_tasks(static_cast<int64_t>(tasks.size()), [&](int64_t t) {
    const Task& k = tasks[t];
    if (is_half(k.type))
      half::rows(k.type, xp, T, K, reinterpret_cast<const uint16_t*>(k.w), k.ldw / 2, k.n0, k.n1, k.y, N, isa);
    else
      gemm_part(isa, k.type, acts, k.w, k.ldw, k.n0, k.n1, k.y, N);
  });
  return y;
}

inline Tensor matmul(const Tensor& x, const Tensor& w, int64_t type, int64_t N, int64_t K, Isa isa) {
  return matmul_parts(x, {w}, {type}, {N}, K, isa);
}

// raw rows (R, row_bytes) -> float32 (R, K)
inline Tensor dequantize(const Tensor& w, int64_t type, int64_t K) {
  TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 2, "w must be uint8 (rows, row bytes)");
  check_row(type, K);
  const int64_t bb = block_bytes(type), bv = block_values(type), nb = K / bv, R = w.size(0);
  TORCH_CHECK(w.size(1) == nb * bb, "w rows do not hold ", K, " values of type ", type);
  const Tensor wc = w.contiguous();
  Tensor out = at::empty({R, K}, at::TensorOptions().dtype(at::kFloat));
  const uint8_t* wp = wc.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, R * nb, 32768 / bv, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dequantize_block(type, wp + i * bb, op + i * bv);
  });
  return out;
}

// Between the file's rows (N, row bytes) and interleaved groups (N / 8, blocks x group-block bytes):
// the same blocks, reordered (quant_formats.h); N a multiple of 8.
inline Tensor regroup(const Tensor& w, int64_t type, int64_t K, bool to_groups) {
  TORCH_CHECK(can_interleave(type), "ggml type ", type, " has no interleaved kernel (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K)");
  check_row(type, K);
  const int64_t bb = block_bytes(type), nb = K / block_values(type), gb = interleaved_block_bytes(type);
  const int64_t in_bytes = to_groups ? nb * bb : nb * gb;
  TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 2 && w.size(1) == in_bytes, "w must be uint8 (",
              to_groups ? "rows, " : "groups, ", in_bytes, ")");
  TORCH_CHECK(!to_groups || w.size(0) % IL == 0, "interleaving needs whole groups of ", IL, " rows, not ", w.size(0));
  const int64_t G = to_groups ? w.size(0) / IL : w.size(0);
  const Tensor wc = w.contiguous();
  Tensor out = to_groups ? at::empty({G, nb * gb}, wc.options()) : at::empty({G * IL, nb * bb}, wc.options());
  uint8_t* rows = to_groups ? const_cast<uint8_t*>(wc.data_ptr<uint8_t>()) : out.data_ptr<uint8_t>();
  uint8_t* groups = to_groups ? out.data_ptr<uint8_t>() : const_cast<uint8_t*>(wc.data_ptr<uint8_t>());
  parallel_ranges(G, 16, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t b = 0; b < nb; ++b) {
        uint8_t* blks[IL];
        for (int j = 0; j < IL; ++j) blks[j] = rows + (g * IL + j) * nb * bb + b * bb;
        if (to_groups) regroup_block<true>(type, groups + (g * nb + b) * gb, blks);
        else regroup_block<false>(type, groups + (g * nb + b) * gb, blks);
      }
  });
  return out;
}

inline Tensor interleave(const Tensor& w, int64_t type, int64_t K) { return regroup(w, type, K, true); }
inline Tensor deinterleave(const Tensor& w, int64_t type, int64_t K) { return regroup(w, type, K, false); }

}  // namespace gq
