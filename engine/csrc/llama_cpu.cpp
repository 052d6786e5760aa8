// The decoder stack on the CPU in one C++ call: what engine/models/llama.py (and gemma3.py, gpt2.py)
// do layer by layer in Python, without ~600 Python-dispatched torch ops a step, and with attention
// for the decoding and prefilling tokens read straight out of the paged KV pool (no gathered copy,
// no padding).
//
// One layer loop serves every family; what they differ in is a few switches (Options: LayerNorm or
// RMSNorm, GELU or SiLU, gated MLP or not, the score scale and soft-cap) and what each layer brings
// (biases, Gemma's norms on the attention's and the MLP's outputs, q/k norms, a sliding window, its
// own rotary tables, partial or no rotation).
//
// Built on first use by engine/layers/cpu_kernels.py (torch.utils.cpp_extension). Float32
// activations; the KV cache float32, or float16 (EngineConfig.kv_cache_dtype, converted with F16C).
// Linear layers are either float32 (at::linear, the same call the Python path makes) or torch's
// fbgemm int8 (the packed weights of engine/layers/quant.py, with the same per-token activation
// scaling), or a GGUF block format kept as the file's bytes (quant_cpu.h: Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0, Q4_K, Q5_K, Q6_K, computed as ggml-cpu computes them), or F16 / BF16 rows as stored
// (half_cpu.h). Prefill chunks attend over the paged pool too, flash-attention style (attention_prefill.h).
#include <torch/extension.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <ATen/native/quantized/PackedParams.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "quant_cpu.h"

namespace {

using at::Tensor;

struct Linear {
  Tensor weight;  // float32 (out, in), or undefined when int8 or blocks
  Tensor bias;    // float32 (out) or undefined
  c10::intrusive_ptr<LinearPackedParamsBase> packed;  // int8, or null
  std::vector<Tensor> blocks;  // uint8 (out_i, row bytes) of ggml type types[i] (| INTERLEAVED: (out_i / 8,
                               // 8 x row bytes)), stacked; or empty
  std::vector<int64_t> types, outs;
  int64_t in = 0;

  // y = x W^T (+ b). For int8, x's rows were divided by row_scale; multiply back here.
  Tensor operator()(const Tensor& x) const {
    RECORD_FUNCTION("gptserve::linear", c10::ArrayRef<const c10::IValue>{});
    // rows already divided by their absolute maximum: a fixed [-1, 1] -> 0..127 quantization
    // (engine/layers/quant.py's INPUT_SCALE), the same for a row alone or in any batch
    if (packed) return packed->apply_with_input_q_dq_qweight_dq_output_fp32(x, 2.0 / 127, 64);
    if (!blocks.empty()) {
      Tensor y = gq::matmul_parts(x, blocks, types, outs, in, gq::current_isa());
      return bias.defined() ? y.add_(bias) : y;
    }
    return at::linear(x, weight, bias.defined() ? c10::optional<Tensor>(bias) : c10::nullopt);
  }
  bool int8() const { return static_cast<bool>(packed); }
};

// What the families differ in beyond their shapes and weights; the defaults are Llama's.
struct Options {
  bool layer_norm = false;  // LayerNorm with a bias (GPT-2), else RMSNorm (Gemma's 1 + w is folded in at load)
  bool gelu = false;        // tanh-approximate GELU (GPT-2, Gemma's GeGLU), else SiLU
  bool gated = true;        // act(gate) * up from the fused gate/up projection, else act(up) (GPT-2)
  double attn_scale = 0;    // the scores' scale; 0: 1 / sqrt(head_dim) (Gemma: query_pre_attn_scalar^-1/2)
  double softcap = 0;       // scores -> softcap * tanh(scores / softcap) before the softmax (Gemma 2); 0: none
};

struct Norm {
  Tensor weight, bias;  // (hidden); bias: LayerNorm's, or undefined
  bool defined() const { return weight.defined(); }
};

struct Layer {
  Norm attn_norm, mlp_norm;          // before the attention, before the MLP
  Norm attn_out_norm, mlp_out_norm;  // Gemma: on the attention's and the MLP's outputs, or undefined
  Linear qkv, o, up, down;           // up: gate and up fused (gated MLP), or up alone
  Tensor q_norm, k_norm;  // (head_dim) Qwen3's and Gemma 3's per-head RMSNorm of q and k, or undefined
  Tensor cos, sin;        // (positions, rotary_dim): rotary_dim <= head_dim leading dims turn; 0: none
  int64_t window = 0;     // a sliding window: attend to the last `window` positions only; 0: every position
};

#if defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// exp(x) for 8 floats: Cephes' polynomial (as in avx_mathfun), relative error ~1e-7.
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, z, _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  __m256i n = _mm256_cvttps_epi32(fx);
  n = _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}
#endif

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float sum = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  sum = hsum(_mm256_add_ps(s0, s1));
#endif
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y += a * x
inline void axpy(float a, const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 av = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] += a * x[i];
}

// float16 KV cache rows: the same two loops, converting 8 halves at a time (F16C).
inline float dot(const float* a, const at::Half* b, int64_t n) {
  int64_t i = 0;
  float sum = 0.f;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m256 b0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    const __m256 b1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i + 8)));
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), b0, s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), b1, s1);
  }
  sum = hsum(_mm256_add_ps(s0, s1));
#endif
  for (; i < n; ++i) sum += a[i] * static_cast<float>(b[i]);
  return sum;
}

inline void axpy(float a, const at::Half* x, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  const __m256 av = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, xv, _mm256_loadu_ps(y + i)));
  }
#endif
  for (; i < n; ++i) y[i] += a * static_cast<float>(x[i]);
}

inline void store_row(const float* src, float* dst, int64_t n) { std::copy(src, src + n, dst); }

inline void store_row(const float* src, at::Half* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i) dst[i] = static_cast<at::Half>(src[i]);
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define GPTSERVE_FAST_ATTENTION 1
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// [sum(a0) .. sum(a7)]: eight horizontal sums at once
inline __m256 reduce8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// One query head (NV * 8 floats) against n cached rows (stride apart): n scaled dot products.
template <int NV, typename T>
inline void qk_rows(const float* qh, const T* rows, int64_t stride, int64_t n, float scale, float* out) {
  __m256 qv[NV];
  for (int v = 0; v < NV; ++v) qv[v] = _mm256_loadu_ps(qh + 8 * v);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 a[8];
    for (int r = 0; r < 8; ++r) a[r] = _mm256_setzero_ps();
    for (int v = 0; v < NV; ++v)
      for (int r = 0; r < 8; ++r) a[r] = _mm256_fmadd_ps(qv[v], load8(rows + (j + r) * stride + 8 * v), a[r]);
    _mm256_storeu_ps(out + j, _mm256_mul_ps(reduce8(a), _mm256_set1_ps(scale)));
  }
  for (; j < n; ++j) {
    __m256 a = _mm256_setzero_ps();
    for (int v = 0; v < NV; ++v) a = _mm256_fmadd_ps(qv[v], load8(rows + j * stride + 8 * v), a);
    out[j] = hsum(a) * scale;
  }
}

// acc (NV * 8 floats, in registers) += sum_j p[j] * row_j over n rows
template <int NV, typename T>
inline void pv_rows(const float* p, const T* rows, int64_t stride, int64_t n, __m256* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    for (int v = 0; v < NV; ++v) acc[v] = _mm256_fmadd_ps(pj, load8(rows + j * stride + 8 * v), acc[v]);
  }
}
#endif

// x[i] = exp(x[i]) for n floats
inline void exp_inplace(float* x, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp8(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}

inline void softmax_inplace(float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  for (int64_t i = 0; i < n; ++i) x[i] -= m;
  exp_inplace(x, n);
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const float inv = 1.f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

// scores -> cap * tanh(scores / cap) (Gemma 2's attention soft-cap); cap 0: unchanged
inline void softcap_inplace(float* x, int64_t n, float cap) {
  if (cap == 0.f) return;
  const float inv = 1.f / cap;
  for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] * inv);
}

// A sequence's cached positions first .. len - 1, one block at a time: f(slot of the run's first
// position, its index counted from first, positions in the run).
template <typename F>
inline void for_each_run(const int64_t* table, int64_t first, int64_t len, int64_t block_size, F&& f) {
  for (int64_t blk = first / block_size; blk * block_size < len; ++blk) {
    const int64_t lo = std::max(first, blk * block_size), hi = std::min(len, (blk + 1) * block_size);
    f(table[blk] * block_size + lo - blk * block_size, lo - first, hi - lo);
  }
}

#include "attention_prefill.h"  // prefill::attend, over the helpers above

inline float absmax(const float* p, int64_t n) {
  float m = 0.f;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(p[i]));
  return m;
}

// out = rmsnorm(x) * w, or layernorm(x) * w + b, then (int8) divided by its absolute maximum, kept in scale.
void norm_rows(const Tensor& x, const Norm& norm, bool layer_norm, double eps, Tensor& out, Tensor& scale,
               bool per_token) {
  RECORD_FUNCTION("gptserve::norm", c10::ArrayRef<const c10::IValue>{});
  const int64_t T = x.size(0), H = x.size(1);
  const float* xp = x.data_ptr<float>();
  const float* wp = norm.weight.data_ptr<float>();
  const float* bp = norm.bias.defined() ? norm.bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  float* sp = per_token ? scale.data_ptr<float>() : nullptr;
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = xp + t * H;
    float* orow = op + t * H;
    if (layer_norm) {  // two passes, as torch's LayerNorm (mean, then the variance about it)
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < H; ++i) sum += xr[i];
      const float mean = sum / H;
      float var = 0.f;
#pragma omp simd reduction(+ : var)
      for (int64_t i = 0; i < H; ++i) var += (xr[i] - mean) * (xr[i] - mean);
      const float r = 1.f / std::sqrt(var / H + static_cast<float>(eps));
      for (int64_t i = 0; i < H; ++i) orow[i] = (xr[i] - mean) * r * wp[i] + (bp ? bp[i] : 0.f);
    } else {
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < H; ++i) ss += xr[i] * xr[i];
      const float r = 1.f / std::sqrt(ss / H + static_cast<float>(eps));
      for (int64_t i = 0; i < H; ++i) orow[i] = xr[i] * r * wp[i];
    }
    if (per_token) {
      const float s = std::max(absmax(orow, H), 1e-6f);
      for (int64_t i = 0; i < H; ++i) orow[i] /= s;
      sp[t] = s;
    }
  }
}

// rows /= their absolute maximum (in place), the maxima into scale.
void scale_rows(Tensor& x, Tensor& scale) {
  const int64_t T = x.size(0), H = x.size(1);
  float* xp = x.data_ptr<float>();
  float* sp = scale.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    float* r = xp + t * H;
    const float s = std::max(absmax(r, H), 1e-6f);
    for (int64_t i = 0; i < H; ++i) r[i] /= s;
    sp[t] = s;
  }
}

// x += y * scale (per row; scale undefined: 1)
void residual_add(Tensor& x, const Tensor& y, const Tensor& scale, bool per_token) {
  const int64_t T = x.size(0), H = x.size(1);
  float* xp = x.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  const float* sp = per_token ? scale.data_ptr<float>() : nullptr;
  for (int64_t t = 0; t < T; ++t) {
    const float s = per_token ? sp[t] : 1.f;
    float* xr = xp + t * H;
    const float* yr = yp + t * H;
    if (per_token)
      for (int64_t i = 0; i < H; ++i) xr[i] += yr[i] * s;
    else
      for (int64_t i = 0; i < H; ++i) xr[i] += yr[i];
  }
}

}  // namespace

class LlamaStack {
 public:
  // cos, sin: the rotary tables of every layer that brings none of its own.
  LlamaStack(int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t hidden, int64_t intermediate,
             double eps, Tensor cos, Tensor sin, Options options)
      : num_heads_(num_heads), num_kv_heads_(num_kv_heads), head_dim_(head_dim), hidden_(hidden),
        intermediate_(intermediate), eps_(eps), opts_(options), cos_(cos.contiguous()), sin_(sin.contiguous()) {
    check_rotary(cos_, sin_);
    if (opts_.attn_scale == 0) opts_.attn_scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  }

  // Linears are given as (float weight, bias), (packed int8 ScriptObject, bias) or
  // (([uint8 blocks], [ggml type], [out], in), bias): the parts stacked by rows. Norms as their
  // weight (RMSNorm) or (weight, bias) (LayerNorm); None where the layer has none.
  void add_layer(py::object attn_norm, py::object qkv, py::object o, py::object mlp_norm, py::object up,
                 py::object down, py::object q_norm, py::object k_norm, py::object attn_out_norm,
                 py::object mlp_out_norm, c10::optional<Tensor> cos, c10::optional<Tensor> sin, int64_t window) {
    Layer layer;
    layer.attn_norm = make_norm(attn_norm);
    layer.mlp_norm = make_norm(mlp_norm);
    layer.attn_out_norm = make_norm(attn_out_norm);
    layer.mlp_out_norm = make_norm(mlp_out_norm);
    layer.qkv = make_linear(qkv);
    layer.o = make_linear(o);
    layer.up = make_linear(up);
    layer.down = make_linear(down);
    layer.q_norm = make_norm(q_norm).weight;
    layer.k_norm = make_norm(k_norm).weight;
    TORCH_CHECK(layer.q_norm.defined() == layer.k_norm.defined(), "q and k norms: both or neither");
    TORCH_CHECK(!layer.q_norm.defined() || (layer.q_norm.numel() == head_dim_ && layer.k_norm.numel() == head_dim_),
                "q/k norm: (head_dim)");
    layer.cos = cos ? cos->contiguous() : cos_;
    layer.sin = sin ? sin->contiguous() : sin_;
    check_rotary(layer.cos, layer.sin);
    TORCH_CHECK(window >= 0, "window: 0 (none) or a number of positions");
    layer.window = window;
    TORCH_CHECK(layers_.empty() || layers_[0].qkv.int8() == layer.qkv.int8(), "all layers int8 or none");
    // int8 scales rows back inside the Llama block's steps (and adds no bias but q/k/v's)
    TORCH_CHECK(!layer.qkv.int8() || (!opts_.layer_norm && !layer.attn_out_norm.defined() &&
                                      !layer.mlp_out_norm.defined() && !layer.o.bias.defined() &&
                                      !layer.up.bias.defined() && !layer.down.bias.defined()),
                "int8 layers: the Llama family's block only");
    layers_.push_back(std::move(layer));
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // x (T, hidden) embedded tokens -> (T, hidden) before the final norm. The first num_decode
  // tokens are decodes (one per sequence); prefills[i] = (start, num_new, num_context) with its
  // block table in prefill_tables[i].
  Tensor forward(Tensor x, Tensor positions, Tensor kv_caches, Tensor slot_mapping, int64_t num_decode,
                 Tensor decode_block_tables, Tensor decode_context_lens, std::vector<std::vector<int64_t>> prefills,
                 std::vector<Tensor> prefill_tables) {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "float32 activations only");
    TORCH_CHECK(kv_caches.scalar_type() == at::kFloat || kv_caches.scalar_type() == at::kHalf,
                "KV cache: float32 or float16");
    TORCH_CHECK(kv_caches.size(0) == num_layers(), "one KV cache per layer");
    x = x.contiguous().clone();
    const int64_t T = x.size(0);
    const bool per_token = layers_[0].qkv.int8();
    const int64_t q_size = num_heads_ * head_dim_, kv_size = num_kv_heads_ * head_dim_;
    auto fopts = x.options();
    Tensor h = at::empty({T, hidden_}, fopts);
    Tensor scale = at::empty({T}, fopts);
    Tensor attn = at::empty({T, q_size}, fopts);
    Tensor act = at::empty({T, intermediate_}, fopts);
    positions = positions.contiguous();
    slot_mapping = slot_mapping.contiguous();
    Tensor tables, lens;
    if (num_decode) {
      tables = decode_block_tables.contiguous();
      lens = decode_context_lens.contiguous();
    }
    const bool ln = opts_.layer_norm;
    for (size_t li = 0; li < layers_.size(); ++li) {
      const Layer& L = layers_[li];
      Tensor cache = kv_caches[li];  // (2, blocks, block_size, Hkv, D)
      // attention block
      if (li == 0) norm_rows(x, L.attn_norm, ln, eps_, h, scale, per_token);
      Tensor qkv = L.qkv(h).contiguous();  // (T, q + 2kv)
      post_qkv(qkv, scale, per_token, L, positions, cache, slot_mapping);
      attention(qkv, cache, L.window, num_decode, tables, lens, prefills, prefill_tables, attn);
      if (per_token) scale_rows(attn, scale);
      Tensor o = L.o(attn);
      add_output(x, o, L.attn_out_norm, scale, per_token, h);
      norm_rows(x, L.mlp_norm, ln, eps_, h, scale, per_token);
      // MLP block
      Tensor gu = L.up(h).contiguous();  // (T, 2I) gated, else (T, I)
      activate(gu, scale, per_token, act);
      Tensor d = L.down(act);
      add_output(x, d, L.mlp_out_norm, scale, per_token, h);
      if (li + 1 < layers_.size()) norm_rows(x, layers_[li + 1].attn_norm, ln, eps_, h, scale, per_token);
    }
    return x;
  }

  // Decode attention alone (for tests): q (B, Hq, D) -> (B, Hq, D) over the paged cache, each
  // sequence's last `window` positions (0: all of them).
  Tensor decode_attention(Tensor q, Tensor cache, Tensor tables, Tensor lens, int64_t window) {
    const int64_t B = q.size(0);
    Tensor out = at::empty({B, num_heads_ * head_dim_}, q.options());
    Tensor qc = q.contiguous();
    decode_attention_impl(qc.data_ptr<float>(), num_heads_ * head_dim_, cache, window, B, tables.contiguous(),
                          lens.contiguous(), out.data_ptr<float>(), num_heads_ * head_dim_);
    return out.view({B, num_heads_, head_dim_});
  }

  // Prefill attention alone (for tests): q (T, Hq, D) -> (T, Hq, D); prefills[i] = (start,
  // num_new, num_context) with block table tables[i], keys and values already in the cache.
  Tensor prefill_attention(Tensor q, Tensor cache, std::vector<std::vector<int64_t>> prefills,
                           std::vector<Tensor> tables, int64_t window) {
    const int64_t T = q.size(0), W = num_heads_ * head_dim_;
    Tensor out = at::zeros({T, W}, q.options());
    Tensor qc = q.contiguous();
    std::vector<Tensor> held;
    std::vector<prefill::Chunk> chunks;
    for (size_t i = 0; i < prefills.size(); ++i) {
      held.push_back(tables[i].contiguous());
      chunks.push_back({prefills[i][0], prefills[i][1], prefills[i][2], held.back().data_ptr<int64_t>()});
    }
    prefill_attention_impl(qc.data_ptr<float>(), W, cache.contiguous(), window, chunks, out.data_ptr<float>(), W);
    return out.view({T, num_heads_, head_dim_});
  }

 private:
  void check_rotary(const Tensor& cos, const Tensor& sin) const {
    TORCH_CHECK(cos.scalar_type() == at::kFloat && cos.dim() == 2 && cos.size(1) <= head_dim_ && cos.size(1) % 2 == 0,
                "rotary tables: float32 (positions, rotary_dim), rotary_dim even and at most head_dim");
    TORCH_CHECK(sin.sizes() == cos.sizes() && sin.scalar_type() == at::kFloat, "sin table: as cos");
  }

  static Norm make_norm(py::object n) {
    Norm norm;
    if (n.is_none()) return norm;
    if (py::isinstance<py::tuple>(n)) {
      auto t = n.cast<py::tuple>();
      norm.weight = t[0].cast<Tensor>().contiguous();
      if (!t[1].is_none()) norm.bias = t[1].cast<Tensor>().contiguous();
    } else {
      norm.weight = n.cast<Tensor>().contiguous();
    }
    return norm;
  }

  // (weight, bias): see add_layer
  Linear make_linear(py::object weight_and_bias) {
    auto pair = weight_and_bias.cast<py::tuple>();
    py::object w = pair[0], bias = pair[1];
    Linear lin;
    if (!bias.is_none()) lin.bias = bias.cast<Tensor>().contiguous();
    if (THPVariable_Check(w.ptr())) {
      lin.weight = w.cast<Tensor>().contiguous();
      return lin;
    }
    if (py::isinstance<py::tuple>(w)) {
      auto t = w.cast<py::tuple>();
      lin.blocks = t[0].cast<std::vector<Tensor>>();
      lin.types = t[1].cast<std::vector<int64_t>>(), lin.outs = t[2].cast<std::vector<int64_t>>();
      lin.in = t[3].cast<int64_t>();
      for (int64_t type : lin.types) gq::check_row(gq::base_type(type), lin.in);  // a type with a kernel, whole blocks a row
      return lin;
    }
    static const c10::FunctionSchema& schema =
        c10::Dispatcher::singleton().findSchemaOrThrow("quantized::linear_dynamic", "").schema();
    c10::IValue iv = torch::jit::toIValue(w, schema.arguments()[1].type());
    lin.packed = iv.toCustomClass<LinearPackedParamsBase>();
    return lin;
  }

  // x += y, or (Gemma) x += norm(y) through tmp (T, hidden)
  void add_output(Tensor& x, const Tensor& y, const Norm& out_norm, Tensor& scale, bool per_token, Tensor& tmp) {
    if (!out_norm.defined()) return residual_add(x, y, scale, per_token);
    norm_rows(y, out_norm, opts_.layer_norm, eps_, tmp, scale, false);  // not int8: add_layer checks
    residual_add(x, tmp, scale, false);
  }

  // Scale back (int8), add the bias (int8: the op has none), norm and rotate q and k, write k and v
  // to their cache slots.
  void post_qkv(Tensor& qkv, const Tensor& scale, bool per_token, const Layer& L, const Tensor& positions,
                Tensor& cache, const Tensor& slot_mapping) {
    RECORD_FUNCTION("gptserve::post_qkv", c10::ArrayRef<const c10::IValue>{});
    const int64_t T = qkv.size(0), W = qkv.size(1), D = head_dim_;
    const int64_t R = L.cos.size(1), half = R / 2;  // the leading R dims of each head turn
    const int64_t Hq = num_heads_, Hkv = num_kv_heads_;
    float* p = qkv.data_ptr<float>();
    const float* sp = per_token ? scale.data_ptr<float>() : nullptr;
    const float* bp = L.qkv.int8() && L.qkv.bias.defined() ? L.qkv.bias.data_ptr<float>() : nullptr;
    const float* qn = L.q_norm.defined() ? L.q_norm.data_ptr<float>() : nullptr;
    const float* kn = L.k_norm.defined() ? L.k_norm.data_ptr<float>() : nullptr;
    const int64_t* pos = positions.data_ptr<int64_t>();
    const float* cosp = L.cos.data_ptr<float>();
    const float* sinp = L.sin.data_ptr<float>();
    std::vector<float> tmp(D);
    for (int64_t t = 0; t < T; ++t) {
      float* row = p + t * W;
      if (sp) {
        const float s = sp[t];
        for (int64_t i = 0; i < W; ++i) row[i] *= s;
      }
      if (bp)
        for (int64_t i = 0; i < W; ++i) row[i] += bp[i];
      if (!qn && R == 0) continue;  // GPT-2: nothing to do to q and k
      const float* c = cosp + pos[t] * R;
      const float* s = sinp + pos[t] * R;
      for (int64_t hd = 0; hd < Hq + Hkv; ++hd) {  // q heads, then k heads: contiguous in the row
        float* v = row + hd * D;
        if (qn) {  // the same float32 RMSNorm as the Python path's F.rms_norm
          const float* w = hd < Hq ? qn : kn;
          float ss = 0.f;
          for (int64_t i = 0; i < D; ++i) ss += v[i] * v[i];
          const float r = 1.f / std::sqrt(ss / D + static_cast<float>(eps_));
          for (int64_t i = 0; i < D; ++i) v[i] = v[i] * r * w[i];
        }
        for (int64_t i = 0; i < half; ++i) tmp[i] = v[i] * c[i] - v[i + half] * s[i];
        for (int64_t i = half; i < R; ++i) tmp[i] = v[i] * c[i] + v[i - half] * s[i];
        std::copy(tmp.begin(), tmp.begin() + R, v);
      }
    }
    if (cache.scalar_type() == at::kHalf)
      write_cache<at::Half>(qkv, cache, slot_mapping);
    else
      write_cache<float>(qkv, cache, slot_mapping);
  }

  template <typename T>
  void write_cache(const Tensor& qkv, Tensor& cache, const Tensor& slot_mapping) {
    const int64_t T_ = qkv.size(0), W = qkv.size(1), D = head_dim_, Hq = num_heads_, Hkv = num_kv_heads_;
    const float* p = qkv.data_ptr<float>();
    const int64_t* slots = slot_mapping.data_ptr<int64_t>();
    T* kc = cache[0].data_ptr<T>();
    T* vc = cache[1].data_ptr<T>();
    const int64_t slot_stride = Hkv * D;
    for (int64_t t = 0; t < T_; ++t) {
      const float* row = p + t * W;
      store_row(row + Hq * D, kc + slots[t] * slot_stride, Hkv * D);
      store_row(row + (Hq + Hkv) * D, vc + slots[t] * slot_stride, Hkv * D);
    }
  }

  // For each decoding sequence b: its query heads attend over the sequence's first lens[b] cached
  // positions (a sliding window: the last `window` of them), read block by block straight from the
  // pool (head h reads KV head h / G).
  void decode_attention_impl(const float* q, int64_t q_stride, const Tensor& cache, int64_t window, int64_t B,
                             const Tensor& tables, const Tensor& lens, float* out, int64_t out_stride) {
    RECORD_FUNCTION("gptserve::decode_attention", c10::ArrayRef<const c10::IValue>{});
    if (cache.scalar_type() == at::kHalf)
      decode_attention_t<at::Half>(q, q_stride, cache, window, B, tables, lens, out, out_stride);
    else
      decode_attention_t<float>(q, q_stride, cache, window, B, tables, lens, out, out_stride);
  }

  template <typename T>
  void decode_attention_t(const float* q, int64_t q_stride, const Tensor& cache, int64_t window, int64_t B,
                          const Tensor& tables, const Tensor& lens, float* out, int64_t out_stride) {
    const int64_t D = head_dim_, Hkv = num_kv_heads_, G = num_heads_ / num_kv_heads_;
    const int64_t block_size = cache.size(2);
    const T* kc = cache[0].data_ptr<T>();
    const T* vc = cache[1].data_ptr<T>();
    const int64_t* tab = tables.data_ptr<int64_t>();
    const int64_t tab_stride = tables.size(1);
    const int64_t* lp = lens.data_ptr<int64_t>();
    const float sm_scale = static_cast<float>(opts_.attn_scale), cap = static_cast<float>(opts_.softcap);
    const int64_t slot_stride = Hkv * D;
    int64_t max_len = 0;  // the most keys a sequence attends over
    for (int64_t b = 0; b < B; ++b) max_len = std::max(max_len, window ? std::min(lp[b], window) : lp[b]);
    // one task per sequence and KV head (its G query heads): a lone sequence's attention still
    // spreads over the threads; a task reads its KV head's part of each cached row
    const int64_t per_task = G * max_len * D;  // multiply-adds, about; tiny tasks go several at once
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, per_task));
    const int64_t units = B * Hkv;
    gq::parallel_ranges(units, grain, [&](int64_t begin, int64_t end) {
      thread_local std::vector<float> scores, acc;  // each thread's, kept from task to task
      scores.resize(G * max_len);
      acc.resize(G * D);
      for (int64_t u = begin; u < end; ++u) {
        const int64_t b = u / Hkv, g = u % Hkv, h0 = g * G;
        const int64_t len = lp[b], first = window ? std::max<int64_t>(0, len - window) : 0, n = len - first;
        const int64_t* table = tab + b * tab_stride;
        const float* qb = q + b * q_stride + h0 * D;
        float* ob = out + b * out_stride + h0 * D;
#ifdef GPTSERVE_FAST_ATTENTION
        if (D == 64 || D == 128) {
          fast_heads<T>(qb, G, kc + g * D, vc + g * D, table, first, len, block_size, slot_stride, sm_scale,
                        scores.data(), max_len, ob);
          continue;
        }
#endif
        for_each_run(table, first, len, block_size, [&](int64_t slot, int64_t j, int64_t count) {
          for (int64_t off = 0; off < count; ++off) {
            const T* row = kc + (slot + off) * slot_stride + g * D;
            for (int64_t h = 0; h < G; ++h) scores[h * max_len + j + off] = dot(qb + h * D, row, D) * sm_scale;
          }
        });
        for (int64_t h = 0; h < G; ++h) {
          softcap_inplace(scores.data() + h * max_len, n, cap);
          softmax_inplace(scores.data() + h * max_len, n);
        }
        std::fill(acc.begin(), acc.end(), 0.f);
        for_each_run(table, first, len, block_size, [&](int64_t slot, int64_t j, int64_t count) {
          for (int64_t off = 0; off < count; ++off) {
            const T* row = vc + (slot + off) * slot_stride + g * D;
            for (int64_t h = 0; h < G; ++h) axpy(scores[h * max_len + j + off], row, acc.data() + h * D, D);
          }
        });
        std::copy(acc.begin(), acc.end(), ob);
      }
    });
  }

#ifdef GPTSERVE_FAST_ATTENTION
  // One sequence's `heads` query heads that share one KV head (kc, vc: that head's column of the
  // pool), head_dim 64 or 128: eight keys at a time per head, the value sums kept in registers.
  template <typename T>
  void fast_heads(const float* qb, int64_t heads, const T* kc, const T* vc, const int64_t* table, int64_t first,
                  int64_t len, int64_t block_size, int64_t slot_stride, float sm_scale, float* scores,
                  int64_t max_len, float* out) {
    if (head_dim_ == 64)
      fast_heads_nv<8, T>(qb, heads, kc, vc, table, first, len, block_size, slot_stride, sm_scale, scores, max_len,
                          out);
    else
      fast_heads_nv<16, T>(qb, heads, kc, vc, table, first, len, block_size, slot_stride, sm_scale, scores, max_len,
                           out);
  }

  template <int NV, typename T>
  void fast_heads_nv(const float* qb, int64_t heads, const T* kc, const T* vc, const int64_t* table, int64_t first,
                     int64_t len, int64_t block_size, int64_t slot_stride, float sm_scale, float* scores,
                     int64_t max_len, float* out) {
    constexpr int64_t D = NV * 8;
    const float cap = static_cast<float>(opts_.softcap);
    // Block by block, every query head of the group on a block while its rows are in L1, and the
    // next block's rows (this KV head's part of each) prefetched: the pool is read in blocks
    // scattered over memory, a few hundred bytes of each row, and without this the cores wait on
    // memory at about a third of the bandwidth a weight matrix streams at.
    const int64_t row_bytes = D * static_cast<int64_t>(sizeof(T));
    auto prefetch_run = [&](const T* pool, int64_t blk) {
      if (blk * block_size >= len) return;
      const int64_t lo = std::max(first, blk * block_size), hi = std::min(len, (blk + 1) * block_size);
      const char* row = reinterpret_cast<const char*>(pool + (table[blk] * block_size + lo - blk * block_size) * slot_stride);
      for (int64_t i = 0; i < hi - lo; ++i, row += slot_stride * sizeof(T))
        for (int64_t off = 0; off < row_bytes; off += 64) _mm_prefetch(row + off, _MM_HINT_T0);
    };
    const int64_t b0 = first / block_size;
    prefetch_run(kc, b0);
    for_each_run(table, first, len, block_size, [&](int64_t slot, int64_t j, int64_t count) {
      prefetch_run(kc, (first + j) / block_size + 1);
      for (int64_t h = 0; h < heads; ++h)
        qk_rows<NV>(qb + h * D, kc + slot * slot_stride, slot_stride, count, sm_scale, scores + h * max_len + j);
    });
    prefetch_run(vc, b0);
    for (int64_t h = 0; h < heads; ++h) {
      softcap_inplace(scores + h * max_len, len - first, cap);
      softmax_inplace(scores + h * max_len, len - first);
    }
    // each head's sums in out (its D floats), in registers over a block: the same additions in the
    // same order as one head's pass over every row
    for (int64_t i = 0; i < heads * D; ++i) out[i] = 0.f;
    for_each_run(table, first, len, block_size, [&](int64_t slot, int64_t j, int64_t count) {
      prefetch_run(vc, (first + j) / block_size + 1);
      for (int64_t h = 0; h < heads; ++h) {
        __m256 acc[NV];
        for (int v = 0; v < NV; ++v) acc[v] = _mm256_loadu_ps(out + h * D + 8 * v);
        pv_rows<NV>(scores + h * max_len + j, vc + slot * slot_stride, slot_stride, count, acc);
        for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + h * D + 8 * v, acc[v]);
      }
    });
  }
#endif

  void attention(const Tensor& qkv, const Tensor& cache, int64_t window, int64_t num_decode, const Tensor& tables,
                 const Tensor& lens, const std::vector<std::vector<int64_t>>& prefills,
                 const std::vector<Tensor>& prefill_tables, Tensor& out) {
    const int64_t q_size = num_heads_ * head_dim_;
    if (num_decode)
      decode_attention_impl(qkv.data_ptr<float>(), qkv.size(1), cache, window, num_decode, tables, lens,
                            out.data_ptr<float>(), q_size);
    if (prefills.empty()) return;
    std::vector<prefill::Chunk> chunks;
    for (size_t i = 0; i < prefills.size(); ++i) {
      TORCH_CHECK(prefill_tables[i].scalar_type() == at::kLong && prefill_tables[i].is_contiguous(),
                  "block tables: contiguous int64");
      chunks.push_back({prefills[i][0], prefills[i][1], prefills[i][2], prefill_tables[i].data_ptr<int64_t>()});
    }
    prefill_attention_impl(qkv.data_ptr<float>(), qkv.size(1), cache, window, chunks, out.data_ptr<float>(), q_size);
  }

  void prefill_attention_impl(const float* q, int64_t q_stride, const Tensor& cache, int64_t window,
                              const std::vector<prefill::Chunk>& chunks, float* out, int64_t out_stride) {
    RECORD_FUNCTION("gptserve::prefill_attention", c10::ArrayRef<const c10::IValue>{});
    const prefill::Shape sh{num_heads_, num_kv_heads_, head_dim_, cache.size(2), num_kv_heads_ * head_dim_,
                            static_cast<float>(opts_.attn_scale), static_cast<float>(opts_.softcap), window};
    if (cache.scalar_type() == at::kHalf)
      prefill::attend<at::Half>(q, q_stride, cache, chunks, sh, out, out_stride);
    else
      prefill::attend<float>(q, q_stride, cache, chunks, sh, out, out_stride);
  }

  // act = act(gate) * up from (T, 2I) (gated), or act(up) from (T, I), scaled back first for int8;
  // then (int8) rows scaled. SiLU(g) = g / (1 + exp(-g)) and tanh-GELU(g) = g / (1 + exp(-2y)),
  // y = sqrt(2 / pi) (g + 0.044715 g^3) (0.5 (1 + tanh y) = 1 / (1 + exp(-2y))): one vector exp each.
  void activate(const Tensor& gu, Tensor& scale, bool per_token, Tensor& act) {
    RECORD_FUNCTION("gptserve::activate", c10::ArrayRef<const c10::IValue>{});
    const int64_t T = gu.size(0), I = intermediate_, W = gu.size(1);
    TORCH_CHECK(W == (opts_.gated ? 2 * I : I), "MLP input projection: (T, 2I) gated, else (T, I)");
    const float* gp = gu.data_ptr<float>();
    float* ap = act.data_ptr<float>();
    float* sp = per_token ? scale.data_ptr<float>() : nullptr;
    for (int64_t t = 0; t < T; ++t) {
      const float* g = gp + t * W;
      const float* u = g + I;
      float* a = ap + t * I;
      const float s = per_token ? sp[t] : 1.f;
      if (opts_.gelu)
        for (int64_t i = 0; i < I; ++i) {
          const float v = g[i] * s;
          a[i] = -1.5957691216057308f * (v + 0.044715f * v * v * v);
        }
      else
        for (int64_t i = 0; i < I; ++i) a[i] = -(g[i] * s);
      exp_inplace(a, I);  // a = exp(-gate) (SiLU), exp(-2y) (GELU)
      if (opts_.gated)
        for (int64_t i = 0; i < I; ++i) a[i] = (g[i] * s) / (1.f + a[i]) * (u[i] * s);
      else
        for (int64_t i = 0; i < I; ++i) a[i] = (g[i] * s) / (1.f + a[i]);
      if (per_token) {
        const float m = std::max(absmax(a, I), 1e-6f);
        for (int64_t i = 0; i < I; ++i) a[i] /= m;
        sp[t] = m;
      }
    }
  }

  int64_t num_heads_, num_kv_heads_, head_dim_, hidden_, intermediate_;
  double eps_;
  Options opts_;
  Tensor cos_, sin_;
  std::vector<Layer> layers_;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quant_matmul", [](Tensor x, Tensor w, int64_t type, int64_t n, int64_t k, std::string isa) {
          return gq::matmul(x, w, type, n, k, isa.empty() ? gq::current_isa() : gq::parse_isa(isa));
        }, py::arg("x"), py::arg("w"), py::arg("type"), py::arg("n"), py::arg("k"), py::arg("isa") = "",
        py::call_guard<py::gil_scoped_release>(),
        "y (T, n) float32 = x (T, k) @ W.T for W the raw GGUF blocks (n, row bytes) of ggml type `type`");
  m.def("quant_matmul_parts", [](Tensor x, std::vector<Tensor> ws, std::vector<int64_t> types,
                                 std::vector<int64_t> ns, int64_t k) {
          return gq::matmul_parts(x, ws, types, ns, k, gq::current_isa());
        }, py::call_guard<py::gil_scoped_release>(),
        "y (T, sum ns) float32 = x (T, k) @ [W_0; W_1; ...].T for raw GGUF block parts, each of its own type");
  m.def("quant_dequantize", &gq::dequantize, "raw GGUF block rows (R, row bytes) -> float32 (R, k)");
  m.def("quant_interleave", &gq::interleave, py::arg("w"), py::arg("type"), py::arg("k"),
        "raw rows (N, row bytes) of Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K -> (N / 8, group bytes) interleaved (8 x row "
        "bytes; Q4_K's a little more, its scales a byte each): what quant_matmul takes with type | INTERLEAVED");
  m.def("quant_deinterleave", &gq::deinterleave, py::arg("w"), py::arg("type"), py::arg("k"),
        "interleaved (N / 8, group bytes) -> the file's rows (N, row bytes)");
  m.def("can_interleave", &gq::can_interleave, "whether ggml type `type` has an interleaved kernel");
  m.attr("INTERLEAVED") = gq::INTERLEAVED;
  m.def("release_file_pages", [](Tensor t) {
          // Drop this process's mappings of the whole pages inside t's bytes, which must be a read-only
          // file mapping (a GGUF file's tensor, read once to interleave it): they stay in the page
          // cache and fault back in if read again; resident memory no longer counts them.
#ifdef __linux__
          const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
          const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
          const uintptr_t first = (begin + page - 1) / page * page, last = (begin + t.nbytes()) / page * page;
          if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
#endif
        }, "madvise(MADV_DONTNEED) the whole pages of a read-only file-mapped tensor (never other memory)");
  m.def("set_isa", &gq::set_isa, "the kernel variant later calls use: auto | avx512 | avx2 | scalar");
  m.def("supported_isas", &gq::supported_isas, "the kernel variants this CPU can run");
  m.def("native_types", &gq::native_types, "the ggml types the block GEMM computes on");
  py::class_<Options>(m, "StackOptions")
      .def(py::init<>())
      .def_readwrite("layer_norm", &Options::layer_norm)
      .def_readwrite("gelu", &Options::gelu)
      .def_readwrite("gated", &Options::gated)
      .def_readwrite("attn_scale", &Options::attn_scale)
      .def_readwrite("softcap", &Options::softcap);
  py::class_<LlamaStack>(m, "LlamaStack")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, double, Tensor, Tensor, Options>(),
           py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("hidden"),
           py::arg("intermediate"), py::arg("eps"), py::arg("cos"), py::arg("sin"), py::arg("options") = Options())
      .def("add_layer", &LlamaStack::add_layer, py::arg("attn_norm"), py::arg("qkv"), py::arg("o"),
           py::arg("mlp_norm"), py::arg("up"), py::arg("down"), py::kw_only(), py::arg("q_norm") = py::none(),
           py::arg("k_norm") = py::none(), py::arg("attn_out_norm") = py::none(),
           py::arg("mlp_out_norm") = py::none(), py::arg("cos") = py::none(), py::arg("sin") = py::none(),
           py::arg("window") = 0)
      .def("num_layers", &LlamaStack::num_layers)
      .def("forward", &LlamaStack::forward, py::call_guard<py::gil_scoped_release>())
      .def("decode_attention", &LlamaStack::decode_attention, py::arg("q"), py::arg("cache"), py::arg("tables"),
           py::arg("lens"), py::arg("window") = 0, py::call_guard<py::gil_scoped_release>())
      .def("prefill_attention", &LlamaStack::prefill_attention, py::arg("q"), py::arg("cache"), py::arg("prefills"),
           py::arg("tables"), py::arg("window") = 0, py::call_guard<py::gil_scoped_release>());
}
