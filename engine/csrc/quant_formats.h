// GGUF block formats as ggml lays them out (ggml/src/ggml-common.h, ggml-quants.c), the
// activations quantized to pair with them (ggml-cpu's vec_dot_type), and the portable code that
// reads one block: its dequantized values and its dot product with the activations.
//
// Weights and the activations they pair with:
//   Q4_0 Q5_0 Q8_0  x Q8_0 (blocks of 32: fp16 d, int8 qs)
//   Q4_1 Q5_1       x Q8_1 (Q8_0 plus s = fp16(d sum(qs)), the term that meets the weight's min)
//   Q4_K Q5_K Q6_K  x Q8_K (blocks of 256: float32 d, int8 qs, int16 sums of each 16)
// The K formats are super-blocks of 256 values: eight sub-blocks of 32 with 6-bit scales and
// mins (Q4_K, Q5_K: w = d sc q - dmin m) or sixteen of 16 with int8 scales (Q6_K: w = d sc (q - 32)).
// A dot product is an exact integer sum over the super-block (sub-block sums times their
// scales, the mins through the activations' 16-sums), then one float multiply per scale:
//   d_w d_x sum_j sc_j sum(q x) - dmin_w d_x sum_j m_j sum_j(x)
#pragma once

#include <torch/extension.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "thread_pool.h"

namespace gq {

// ggml_type ids (ggml.h)
enum Type : int64_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
  Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30
};

constexpr int64_t QK = 32;     // values per block of the 32-value formats and of Q8_0/Q8_1
constexpr int64_t QK_K = 256;  // values per super-block of the K formats and of Q8_K

// the types with a kernel (engine/layers/blocks.py's NATIVE_TYPES, kept equal by a test)
inline std::vector<int64_t> native_types() { return {Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F16, BF16}; }
inline bool is_k(int64_t type) { return type == Q4_K || type == Q5_K || type == Q6_K; }
// F16 / BF16 rows (half_cpu.h) are "blocks" of one 2-byte value
inline bool is_half(int64_t type) { return type == F16 || type == BF16; }
inline int64_t block_values(int64_t type) { return is_k(type) ? QK_K : is_half(type) ? 1 : QK; }

inline int64_t block_bytes(int64_t type) {
  switch (type) {
    case Q4_0: return 18;   // d, qs[16]
    case Q4_1: return 20;   // d, m, qs[16]
    case Q5_0: return 22;   // d, qh[4], qs[16]
    case Q5_1: return 24;   // d, m, qh[4], qs[16]
    case Q8_0: return 34;   // d, qs[32]
    case Q4_K: return 144;  // d, dmin, scales[12], qs[128]
    case Q5_K: return 176;  // d, dmin, scales[12], qh[32], qs[128]
    case Q6_K: return 210;  // ql[128], qh[64], scales[16] (int8), d
    case F16: case BF16: return 2;
    default:
      TORCH_CHECK(false, "ggml type ", type, " has no native kernel (supported: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, ",
                  "Q4_K, Q5_K, Q6_K, F16, BF16)");
  }
  return 0;
}

// a row of K values of `type` is whole blocks (and the type has a kernel: refused by name otherwise)
inline void check_row(int64_t type, int64_t K) {
  block_bytes(type);
  const int64_t bv = block_values(type);
  TORCH_CHECK(K % bv == 0, "in_features ", K, " is not a multiple of ", bv, ", the block size of ggml type ", type);
}

inline float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return c10::detail::fp16_ieee_to_fp32_value(h);
}
inline float half_to_float(int64_t type, uint16_t h) {
  if (type == F16) return c10::detail::fp16_ieee_to_fp32_value(h);
  const uint32_t bits = static_cast<uint32_t>(h) << 16;  // BF16: float32's top half
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float round_fp16(float x) {
  return c10::detail::fp16_ieee_to_fp32_value(c10::detail::fp16_ieee_from_fp32_value(x));
}

// ---- activations ------------------------------------------------------------------------------

// Per block of 32: Q8_0 (qs, d) plus Q8_1's s, and the integer block sums.
struct QActs {
  int64_t T = 0, K = 0, nb = 0;
  std::vector<int8_t> qs;    // (T, K)
  std::vector<float> d;      // (T, nb) the fp16 scale, as float
  std::vector<float> s;      // (T, nb) fp16(d * sum(qs)), Q8_1's term
  std::vector<int32_t> sum;  // (T, nb) sum(qs)
};

// Per super-block of 256: Q8_K.
struct QActsK {
  int64_t T = 0, K = 0, nb = 0;
  std::vector<int8_t> qs;      // (T, K)
  std::vector<float> d;        // (T, nb)
  std::vector<int16_t> bsums;  // (T, nb, 16) the sum of each 16 qs
};

// x86's quantize_row_q8_0/q8_1: d = amax / 127 (stored as fp16), q = round-to-nearest-even(x 127 / amax).
inline void quantize_acts(const float* x, int64_t T, int64_t K, QActs& a) {
  TORCH_CHECK(K % QK == 0, "in_features ", K, " is not a multiple of 32");
  a.T = T, a.K = K, a.nb = K / QK;
  a.qs.resize(T * K);
  a.d.resize(T * a.nb);
  a.s.resize(T * a.nb);
  a.sum.resize(T * a.nb);
  parallel_ranges(T * a.nb, 256, [&](int64_t begin, int64_t end) {
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

// quantize_row_q8_K_ref: the value of largest magnitude (the first, on a tie) maps to -127 (its
// sign flipped), iscale = -127 / max, q = min(127, nearest(x iscale)), d = 1 / iscale.
inline void quantize_acts_k(const float* x, int64_t T, int64_t K, QActsK& a) {
  TORCH_CHECK(K % QK_K == 0, "in_features ", K, " is not a multiple of 256");
  a.T = T, a.K = K, a.nb = K / QK_K;
  a.qs.resize(T * K);
  a.d.resize(T * a.nb);
  a.bsums.resize(T * a.nb * 16);
  parallel_ranges(T * a.nb, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* v = x + i * QK_K;
      int8_t* q = a.qs.data() + i * QK_K;
      int16_t* bs = a.bsums.data() + i * 16;
      float amax = 0.f, max = 0.f;
      for (int j = 0; j < QK_K; ++j)
        if (std::fabs(v[j]) > amax) amax = std::fabs(v[j]), max = v[j];
      if (amax == 0.f) {
        a.d[i] = 0.f;
        std::memset(q, 0, QK_K);
        std::memset(bs, 0, 16 * sizeof(int16_t));
        continue;
      }
      const float iscale = -127.f / max;
      for (int j = 0; j < QK_K; ++j)  // nearbyint: ties to even, as ggml's nearest_int
        q[j] = static_cast<int8_t>(std::min(127, static_cast<int>(std::nearbyint(iscale * v[j]))));
      for (int j = 0; j < 16; ++j) {
        int sum = 0;
        for (int l = 0; l < 16; ++l) sum += q[16 * j + l];
        bs[j] = static_cast<int16_t>(sum);
      }
      a.d[i] = 1.f / iscale;
    }
  });
}

// ---- one block, portable ----------------------------------------------------------------------

// Q4_K / Q5_K's twelve scale bytes -> sc[0..7] then m[0..7], 6 bits each: bytes 0-3 hold sc 0-3
// (low 6 bits) and the top 2 bits of sc 4-7, bytes 4-7 the same for m, bytes 8-11 the low 4 bits
// of sc 4-7 (low nibble) and m 4-7 (high nibble).
inline void k_scales_mins(const uint8_t* scales, uint8_t out[16]) {
  uint32_t a, b, c;
  std::memcpy(&a, scales, 4);
  std::memcpy(&b, scales + 4, 4);
  std::memcpy(&c, scales + 8, 4);
  const uint32_t s03 = a & 0x3f3f3f3f, m03 = b & 0x3f3f3f3f;
  const uint32_t s47 = (c & 0x0f0f0f0f) | (((a >> 6) & 0x03030303) << 4);
  const uint32_t m47 = ((c >> 4) & 0x0f0f0f0f) | (((b >> 6) & 0x03030303) << 4);
  std::memcpy(out, &s03, 4);
  std::memcpy(out + 4, &s47, 4);
  std::memcpy(out + 8, &m03, 4);
  std::memcpy(out + 12, &m47, 4);
}

// ---- rows interleaved 8 at a time ------------------------------------------------------------
// The 32-value formats' and Q4_K's weights can be held "interleaved" (quant_cpu.h's interleave(), done once at
// load): rows in groups of 8, and for each block index b the 8 rows' blocks as one group-block of the
// same bytes, reordered so that a 32-byte load gives 4 values of each of the 8 rows:
//   d[8] (fp16) | m[8] (fp16, Q4_1 / Q5_1) | qh[8] (uint32, Q5_0 / Q5_1) | qs
// Q4 / Q5 qs: 4 chunks of 32 bytes, chunk c's bytes 4j..4j+3 = row j's file bytes 4c..4c+3 (low
// nibbles: values 4c..4c+3, high nibbles: values 16+4c..16+4c+3); Q8_0 qs: 8 chunks, chunk g's bytes
// 4j..4j+3 = row j's values 4g..4g+3; Q5 qh word g, bit 4j+i = row j's value 4g+i's fifth bit.
// Q4_K (quant_gemm_k_simd.inc's tile8_q4k): per super-block of 8 rows
//   d[8] | dmin[8] (fp16) | sc[8 sub-blocks][8 rows] | m[8][8] (the 6-bit scales and mins, one
//   byte each) | qs: 4 chunks of 256 bytes, chunk c's 32-byte register g holding each row j's file
//   bytes 32c + 4g .. 32c + 4g + 3 at 4j (low nibbles: sub-block 2c, high: 2c + 1)
// 1,184 bytes where the 8 file blocks take 1,152 (the scales unpacked from 6 bits).
// A GEMM over them multiplies one activation row by 8 weight rows with whole-register integer
// products and the 8 rows' scales as one vector. The ggml type of such weights is passed to the
// GEMM with INTERLEAVED set.
constexpr int64_t INTERLEAVED = 256;
constexpr int64_t IL = 8;  // rows per group

inline bool is_interleaved(int64_t type) { return (type & INTERLEAVED) != 0; }
inline int64_t base_type(int64_t type) { return type & ~INTERLEAVED; }
inline bool can_interleave(int64_t type) {
  return type == Q4_0 || type == Q4_1 || type == Q5_0 || type == Q5_1 || type == Q8_0 || type == Q4_K;
}

// bytes of one group-block (8 rows' block b)
inline int64_t interleaved_block_bytes(int64_t type) { return type == Q4_K ? 1184 : IL * block_bytes(type); }

// k_scales_mins's inverse: sc[0..7], m[0..7] (6 bits each) -> the twelve bytes
inline void k_scales_pack(const uint8_t sm[16], uint8_t* scales) {
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<uint8_t>((sm[j] & 63) | ((sm[4 + j] >> 4) << 6));
    scales[4 + j] = static_cast<uint8_t>((sm[8 + j] & 63) | ((sm[12 + j] >> 4) << 6));
    scales[8 + j] = static_cast<uint8_t>((sm[4 + j] & 15) | ((sm[12 + j] & 15) << 4));
  }
}

// 8 nibbles of each of 8 words, transposed: out[a]'s nibble b = in[b]'s nibble a (its own inverse:
// a row's Q5 fifth bits <-> a group-block's words)
inline void transpose_nibbles(const uint32_t in[IL], uint32_t out[IL]) {
  for (int a = 0; a < IL; ++a) {
    out[a] = 0;
    for (int b = 0; b < IL; ++b) out[a] |= ((in[b] >> (4 * a)) & 15u) << (4 * b);
  }
}

// Between the 8 file blocks rows[j] (row j's block b) and one group-block `group` (the layouts
// above): TO_GROUP copies rows -> group, else group -> rows. Every byte moves by the same map
// both ways; only Q4_K's scales (6 bits packed <-> a byte each) and Q5's fifth bits change form.
template <bool TO_GROUP>
inline void regroup_block(int64_t type, uint8_t* group, uint8_t* const rows[IL]) {
  auto move = [](uint8_t* g, uint8_t* r, size_t n) { TO_GROUP ? std::memcpy(g, r, n) : std::memcpy(r, g, n); };
  if (type == Q4_K) {
    for (int j = 0; j < IL; ++j) {
      move(group + 2 * j, rows[j], 2), move(group + 16 + 2 * j, rows[j] + 2, 2);
      uint8_t sm[16];
      if (TO_GROUP) k_scales_mins(rows[j] + 4, sm);
      for (int k = 0; k < 8; ++k) move(group + 32 + 8 * k + j, sm + k, 1), move(group + 96 + 8 * k + j, sm + 8 + k, 1);
      if (!TO_GROUP) k_scales_pack(sm, rows[j] + 4);
      for (int c = 0; c < 4; ++c)
        for (int g = 0; g < 8; ++g) move(group + 160 + 256 * c + 32 * g + 4 * j, rows[j] + 16 + 32 * c + 4 * g, 4);
    }
    return;
  }
  const bool has_min = type == Q4_1 || type == Q5_1, has_high = type == Q5_0 || type == Q5_1;
  const int64_t qh_off = has_min ? 4 : 2, qoff = qh_off + (has_high ? 4 : 0);  // in the file block
  uint8_t* o = group;
  for (int j = 0; j < IL; ++j) move(o + 2 * j, rows[j], 2);
  o += 16;
  if (has_min) {
    for (int j = 0; j < IL; ++j) move(o + 2 * j, rows[j] + 2, 2);
    o += 16;
  }
  if (has_high) {
    uint32_t from[IL], to[IL];
    for (int j = 0; j < IL; ++j) TO_GROUP ? std::memcpy(&from[j], rows[j] + qh_off, 4) : std::memcpy(&from[j], o + 4 * j, 4);
    transpose_nibbles(from, to);
    for (int j = 0; j < IL; ++j) TO_GROUP ? std::memcpy(o + 4 * j, &to[j], 4) : std::memcpy(rows[j] + qh_off, &to[j], 4);
    o += 32;
  }
  const int chunks = type == Q8_0 ? 8 : 4;
  for (int c = 0; c < chunks; ++c)
    for (int j = 0; j < IL; ++j) move(o + 32 * c + 4 * j, rows[j] + qoff + 4 * c, 4);
}

// A block unpacked: value i = (d sc[g]) q[i] - dmin mn[g], g = i / group: sub-blocks of 32 (Q4_K,
// Q5_K) or 16 (Q6_K); the 32-value formats are one group with sc = 1, and mn = 1, dmin = -m where
// they have a min m (d q + m).
struct Unpacked {
  int8_t q[QK_K];  // Q6_K: q - 32; Q4_0: q - 8; Q5_0: q - 16; else as stored
  int32_t sc[16], mn[16];
  float d, dmin;
  int group;
};

inline void unpack_block(int64_t type, const uint8_t* blk, Unpacked& u) {
  u.dmin = 0.f;
  std::fill(u.mn, u.mn + 16, 0);
  switch (type) {
    case Q8_0:
      u.d = h2f(blk), u.group = QK, u.sc[0] = 1;
      std::memcpy(u.q, blk + 2, QK);
      return;
    case Q4_0: case Q4_1: case Q5_0: case Q5_1: {
      const bool has_min = type == Q4_1 || type == Q5_1, has_high = type == Q5_0 || type == Q5_1;
      const uint8_t* qs = blk + (has_min ? 4 : 2) + (has_high ? 4 : 0);
      uint32_t qh = 0;
      if (has_high) std::memcpy(&qh, blk + (has_min ? 4 : 2), 4);
      const int offset = type == Q4_0 ? 8 : type == Q5_0 ? 16 : 0;
      for (int j = 0; j < QK / 2; ++j) {  // value j: low nibble of byte j; value j + 16: its high nibble
        u.q[j] = static_cast<int8_t>(((qs[j] & 15) | (((qh >> j) & 1) << 4)) - offset);
        u.q[j + 16] = static_cast<int8_t>(((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - offset);
      }
      u.d = h2f(blk), u.group = QK, u.sc[0] = 1;
      if (has_min) u.dmin = -h2f(blk + 2), u.mn[0] = 1;
      return;
    }
    case Q4_K: case Q5_K: {
      uint8_t sm[16];
      k_scales_mins(blk + 4, sm);
      const uint8_t* qh = blk + 16;
      const uint8_t* qs = blk + (type == Q5_K ? 48 : 16);
      for (int c = 0; c < 4; ++c)  // 32 bytes: sub-block 2c in the low nibbles, 2c + 1 in the high
        for (int l = 0; l < 32; ++l) {
          const int lo = qs[32 * c + l] & 15, hi = qs[32 * c + l] >> 4;
          const int hb = type == Q5_K ? qh[l] : 0;  // bit j: the fifth bit of sub-block j's value l
          u.q[64 * c + l] = static_cast<int8_t>(lo | (((hb >> (2 * c)) & 1) << 4));
          u.q[64 * c + 32 + l] = static_cast<int8_t>(hi | (((hb >> (2 * c + 1)) & 1) << 4));
        }
      for (int j = 0; j < 8; ++j) u.sc[j] = sm[j], u.mn[j] = sm[8 + j];
      u.d = h2f(blk), u.dmin = h2f(blk + 2), u.group = 32;
      return;
    }
    case Q6_K: {
      const uint8_t* ql = blk;
      const uint8_t* qh = blk + 128;
      const int8_t* scales = reinterpret_cast<const int8_t*>(blk + 192);
      for (int h = 0; h < 2; ++h)  // each half: 64 bytes of low nibbles, 32 of 2-bit pairs
        for (int l = 0; l < 32; ++l) {
          const uint8_t* lo = ql + 64 * h;
          const int hb = qh[32 * h + l];
          int8_t* q = u.q + 128 * h;
          q[l] = static_cast<int8_t>(((lo[l] & 15) | ((hb & 3) << 4)) - 32);
          q[l + 32] = static_cast<int8_t>(((lo[l + 32] & 15) | (((hb >> 2) & 3) << 4)) - 32);
          q[l + 64] = static_cast<int8_t>(((lo[l] >> 4) | (((hb >> 4) & 3) << 4)) - 32);
          q[l + 96] = static_cast<int8_t>(((lo[l + 32] >> 4) | (((hb >> 6) & 3) << 4)) - 32);
        }
      for (int j = 0; j < 16; ++j) u.sc[j] = scales[j];
      u.d = h2f(blk + 208), u.group = 16;
      return;
    }
    default: TORCH_CHECK(!is_half(type), "F16/BF16 rows have no blocks to unpack"); block_bytes(type);  // refuses it by name
  }
}

// float values of one block, as gguf's dequantize (the products of small integers are exact)
inline void dequantize_block(int64_t type, const uint8_t* blk, float* out) {
  if (is_half(type)) {
    uint16_t h;
    std::memcpy(&h, blk, 2);
    *out = half_to_float(type, h);
    return;
  }
  Unpacked u;
  unpack_block(type, blk, u);
  for (int64_t i = 0; i < block_values(type); ++i) {
    const int g = static_cast<int>(i) / u.group;
    out[i] = (u.d * static_cast<float>(u.sc[g])) * u.q[i] - u.dmin * static_cast<float>(u.mn[g]);
  }
}

// Row t's block b (of 32) of Q8_0/Q8_1 activations times one unpacked weight block.
inline float block_dot_scalar(const Unpacked& u, const QActs& a, int64_t t, int64_t b) {
  const int8_t* x = a.qs.data() + t * a.K + b * QK;
  const int64_t ib = t * a.nb + b;
  int32_t sumi = 0;
  for (int j = 0; j < QK; ++j) sumi += u.q[j] * x[j];
  const float dot = u.d * a.d[ib] * static_cast<float>(sumi);
  return u.mn[0] ? dot - u.dmin * a.s[ib] : dot;  // Q4_1, Q5_1: d_w d_x sum(q x) + m s_x
}

// Row t's super-block b of Q8_K activations times one unpacked K-format super-block.
inline float kblock_dot_scalar(const Unpacked& u, const QActsK& a, int64_t t, int64_t b) {
  const int8_t* x = a.qs.data() + t * a.K + b * QK_K;
  const int16_t* bsums = a.bsums.data() + (t * a.nb + b) * 16;
  int32_t sumi = 0, summ = 0;
  for (int g = 0; g < QK_K / u.group; ++g) {
    int32_t s = 0;
    for (int l = 0; l < u.group; ++l) s += u.q[g * u.group + l] * x[g * u.group + l];
    sumi += u.sc[g] * s;
  }
  for (int j = 0; j < 16; ++j) summ += u.mn[j * 16 / u.group] * bsums[j];
  const float dx = a.d[t * a.nb + b];
  return (u.d * dx) * static_cast<float>(sumi) - (u.dmin * dx) * static_cast<float>(summ);
}

}  // namespace gq
