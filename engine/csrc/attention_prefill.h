// Prefill attention straight from the paged KV pool, flash-attention style.
//
// A prefill chunk's queries sit at positions p0 .. p0 + n - 1 (p0 > 0 after a prefix-cache hit
// or an earlier chunk); their keys and values, the chunk's own included, are already in the pool
// (post_qkv wrote them). Each task takes one sequence, one KV head and a tile of query rows with
// all G query heads that share that KV head (GQA: one loaded K/V tile serves G heads), walks the
// sequence's keys 64 at a time straight out of the pool (float32 or float16), and keeps a running
// max and sum per query (online softmax), so nothing of size context × context and no gathered
// copy of the context is ever made: per thread a few tiles of scratch (queries, one K tile
// transposed, one V tile, scores, outputs), about 100 KB at head_dim 64.
//
// Included by llama_cpu.cpp inside its namespace, after its vector helpers (hsum, exp8,
// exp_inplace, load8, softcap_inplace); this file includes nothing itself.

namespace prefill {

constexpr int64_t kKeys = 64;  // keys per tile
constexpr int64_t kRows = 6;   // query vectors per register tile

struct Chunk {
  int64_t start;        // first row of the chunk in the step's flat batch
  int64_t num_new;      // its queries
  int64_t num_context;  // keys it attends over: positions 0 .. num_context - 1
  const int64_t* table; // the sequence's block table (at least ceil(num_context / block_size) blocks)
};

struct Shape {
  int64_t num_heads, num_kv_heads, head_dim, block_size, slot_stride;  // slot_stride = Hkv * D
  float scale;     // of the scores
  float softcap;   // scores -> softcap * tanh(scores / softcap); 0: none
  int64_t window;  // a query at p sees keys p - window + 1 .. p; 0: keys 0 .. p
};

// Per-thread scratch, kept from task to task (run_task fills what it reads).
struct Scratch {
  std::vector<float> q, o, s, kt, v, max, sum, alpha;
  void fit(int64_t rows, int64_t D) {
    for (auto* buf : {&q, &o}) buf->resize(rows * D);
    s.resize(rows * kKeys), kt.resize(D * kKeys), v.resize(kKeys * D);
    for (auto* buf : {&max, &sum, &alpha}) buf->resize(rows);
  }
};

#ifdef GPTSERVE_FAST_ATTENTION
inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
#endif

inline float to_float(float x) { return x; }
inline float to_float(at::Half x) { return static_cast<float>(x); }

#ifdef GPTSERVE_FAST_ATTENTION
// r[i] = row i of an 8 x 8 block -> r[k] = its column k
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20), r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20), r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31), r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31), r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

// Keys c0 .. c0 + nc - 1 of one KV head: K transposed into kt (D, kKeys), V into v (kKeys, D),
// zero past nc (their scores are masked; zeros keep stale values from turning into NaN).
template <typename T>
void load_tile(const T* kc, const T* vc, const Chunk& c, const Shape& sh, int64_t koff, int64_t c0, int64_t nc,
               float* kt, float* v) {
  const int64_t D = sh.head_dim, bs = sh.block_size;
  int64_t j0 = 0;
#ifdef GPTSERVE_FAST_ATTENTION
  // eight keys at a time: 8 x 8 blocks of K transposed in registers
  for (; j0 + 8 <= nc; j0 += 8) {
    const T* k[8];
    for (int i = 0; i < 8; ++i) {
      const int64_t pos = c0 + j0 + i;
      const int64_t row = (c.table[pos / bs] * bs + pos % bs) * sh.slot_stride + koff;
      k[i] = kc + row;
      float* vd = v + (j0 + i) * D;
      const T* vr = vc + row;
      int64_t d = 0;
      for (; d + 8 <= D; d += 8) _mm256_storeu_ps(vd + d, load8(vr + d));
      for (; d < D; ++d) vd[d] = to_float(vr[d]);
    }
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = load8(k[i] + d);
      transpose8(r);
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(kt + (d + i) * kKeys + j0, r[i]);
    }
    for (; d < D; ++d)
      for (int i = 0; i < 8; ++i) kt[d * kKeys + j0 + i] = to_float(k[i][d]);
  }
#endif
  for (int64_t j = j0; j < nc; ++j) {
    const int64_t pos = c0 + j;
    const int64_t row = (c.table[pos / bs] * bs + pos % bs) * sh.slot_stride + koff;
    const T* k = kc + row;
    const T* vr = vc + row;
    float* vd = v + j * D;
    int64_t d = 0;
#ifdef GPTSERVE_FAST_ATTENTION
    for (; d + 8 <= D; d += 8) {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, load8(k + d));
      for (int i = 0; i < 8; ++i) kt[(d + i) * kKeys + j] = tmp[i];
      _mm256_storeu_ps(vd + d, load8(vr + d));
    }
#endif
    for (; d < D; ++d) {
      kt[d * kKeys + j] = to_float(k[d]);
      vd[d] = to_float(vr[d]);
    }
  }
  if (nc < kKeys) {
    for (int64_t d = 0; d < D; ++d) std::fill(kt + d * kKeys + nc, kt + (d + 1) * kKeys, 0.f);
    std::fill(v + nc * D, v + kKeys * D, 0.f);
  }
}

// s (R, kKeys) = q (R, D) · kt (D, kKeys)
template <int R>
inline void qk_tile(const float* q, int64_t D, const float* kt, float* s) {
#ifdef GPTSERVE_FAST_ATTENTION
  for (int64_t c = 0; c < kKeys; c += 16) {
    __m256 a0[R], a1[R];
    for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m256 k0 = _mm256_loadu_ps(kt + d * kKeys + c), k1 = _mm256_loadu_ps(kt + d * kKeys + c + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 qv = _mm256_set1_ps(q[r * D + d]);
        a0[r] = _mm256_fmadd_ps(qv, k0, a0[r]);
        a1[r] = _mm256_fmadd_ps(qv, k1, a1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_ps(s + r * kKeys + c, a0[r]);
      _mm256_storeu_ps(s + r * kKeys + c + 8, a1[r]);
    }
  }
#else
  for (int r = 0; r < R; ++r) {
    float* sr = s + r * kKeys;
    std::fill(sr, sr + kKeys, 0.f);
    for (int64_t d = 0; d < D; ++d) {
      const float qd = q[r * D + d];
      for (int64_t j = 0; j < kKeys; ++j) sr[j] += qd * kt[d * kKeys + j];
    }
  }
#endif
}

// o (R, D) = o * alpha (per row) + p (R, kKeys; first nk columns) · v (nk, D)
template <int R>
inline void pv_tile(const float* p, const float* v, int64_t D, int64_t nk, const float* alpha, float* o) {
  int64_t c = 0;
#ifdef GPTSERVE_FAST_ATTENTION
  for (; c + 16 <= D; c += 16) {
    __m256 a0[R], a1[R];
    for (int r = 0; r < R; ++r) {
      const __m256 al = _mm256_set1_ps(alpha[r]);
      a0[r] = _mm256_mul_ps(_mm256_loadu_ps(o + r * D + c), al);
      a1[r] = _mm256_mul_ps(_mm256_loadu_ps(o + r * D + c + 8), al);
    }
    for (int64_t j = 0; j < nk; ++j) {
      const __m256 v0 = _mm256_loadu_ps(v + j * D + c), v1 = _mm256_loadu_ps(v + j * D + c + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 pj = _mm256_set1_ps(p[r * kKeys + j]);
        a0[r] = _mm256_fmadd_ps(pj, v0, a0[r]);
        a1[r] = _mm256_fmadd_ps(pj, v1, a1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_ps(o + r * D + c, a0[r]);
      _mm256_storeu_ps(o + r * D + c + 8, a1[r]);
    }
  }
  for (; c + 8 <= D; c += 8) {
    __m256 a[R];
    for (int r = 0; r < R; ++r) a[r] = _mm256_mul_ps(_mm256_loadu_ps(o + r * D + c), _mm256_set1_ps(alpha[r]));
    for (int64_t j = 0; j < nk; ++j) {
      const __m256 vj = _mm256_loadu_ps(v + j * D + c);
      for (int r = 0; r < R; ++r) a[r] = _mm256_fmadd_ps(_mm256_set1_ps(p[r * kKeys + j]), vj, a[r]);
    }
    for (int r = 0; r < R; ++r) _mm256_storeu_ps(o + r * D + c, a[r]);
  }
#endif
  for (; c < D; ++c)  // head_dim not a multiple of 8 (or no AVX2)
    for (int r = 0; r < R; ++r) {
      float acc = o[r * D + c] * alpha[r];
      for (int64_t j = 0; j < nk; ++j) acc += p[r * kKeys + j] * v[j * D + c];
      o[r * D + c] = acc;
    }
}

template <int R>
inline void tile_rows(int64_t rows, const float* q, int64_t D, const float* kt, const float* v, int64_t nk,
                      Scratch& w, bool scores) {
  // rows is a multiple of R here; the caller peels the rest
  for (int64_t m = 0; m < rows; m += R) {
    if (scores)
      qk_tile<R>(q + m * D, D, kt, w.s.data() + m * kKeys);
    else
      pv_tile<R>(w.s.data() + m * kKeys, v, D, nk, w.alpha.data() + m, w.o.data() + m * D);
  }
}

// All rows of the task's scratch, R query vectors at a time, the last few by a smaller kernel.
inline void for_rows(int64_t M, int64_t D, const float* kt, const float* v, int64_t nk, Scratch& w, bool scores) {
  const int64_t full = M / kRows * kRows;
  tile_rows<kRows>(full, w.q.data(), D, kt, v, nk, w, scores);
  const int64_t m = full, rest = M - full;
  const float* q = w.q.data() + m * D;
  auto one = [&](auto kernel_rows) {
    constexpr int R = decltype(kernel_rows)::value;
    if (scores)
      qk_tile<R>(q, D, kt, w.s.data() + m * kKeys);
    else
      pv_tile<R>(w.s.data() + m * kKeys, v, D, nk, w.alpha.data() + m, w.o.data() + m * D);
  };
  switch (rest) {
    case 1: one(std::integral_constant<int, 1>()); break;
    case 2: one(std::integral_constant<int, 2>()); break;
    case 3: one(std::integral_constant<int, 3>()); break;
    case 4: one(std::integral_constant<int, 4>()); break;
    case 5: one(std::integral_constant<int, 5>()); break;
    default: break;
  }
}

// Online softmax over one key tile: per query vector m (at position pos[m]) the valid keys are
// c0 + lo .. min(c0 + nc, pos[m] + 1) - 1, lo > 0 where a sliding window ends before the tile's
// start; scores become probabilities relative to the new running max, alpha rescales what the
// earlier tiles summed.
inline void softmax_tile(int64_t M, const int64_t* pos, int64_t c0, int64_t nc, const Shape& sh, Scratch& w) {
  for (int64_t m = 0; m < M; ++m) {
    float* s = w.s.data() + m * kKeys;
    const int64_t valid = std::min(nc, pos[m] - c0 + 1);
    const int64_t lo = sh.window ? std::max<int64_t>(0, pos[m] - sh.window + 1 - c0) : 0;
    if (valid <= lo) {  // every key of this tile lies after this query, or before its window
      std::fill(s, s + nc, 0.f);
      w.alpha[m] = 1.f;
      continue;
    }
    softcap_inplace(s + lo, valid - lo, sh.softcap);
    float mx = w.max[m], total = 0.f;
#ifdef GPTSERVE_FAST_ATTENTION
    if (valid == kKeys && lo == 0) {  // a whole tile, no mask: the common case, in vector registers
      __m256 mv = _mm256_set1_ps(mx);
      for (int64_t j = 0; j < kKeys; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + j));
      mx = hmax(mv);
      const __m256 sub = _mm256_set1_ps(mx);
      __m256 acc = _mm256_setzero_ps();
      for (int64_t j = 0; j < kKeys; j += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), sub));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
      }
      total = hsum(acc);
    } else
#endif
    {
      for (int64_t j = lo; j < valid; ++j) mx = std::max(mx, s[j]);
      for (int64_t j = lo; j < valid; ++j) s[j] -= mx;
      exp_inplace(s + lo, valid - lo);
      std::fill(s, s + lo, 0.f);
      std::fill(s + valid, s + nc, 0.f);
      for (int64_t j = lo; j < valid; ++j) total += s[j];
    }
    const float alpha = std::exp(w.max[m] - mx);  // 0 on the first tile (max was -inf)
    w.alpha[m] = alpha;
    w.sum[m] = w.sum[m] * alpha + total;
    w.max[m] = mx;
  }
}

struct Task {
  int64_t chunk, kv_head, row0, row1, cost;
};

// One task: query rows row0 .. row1 - 1 of chunk c, the G query heads of KV head g.
template <typename T>
void run_task(const Task& t, const Chunk& c, const Shape& sh, const T* kc, const T* vc, const float* q,
              int64_t q_stride, float* out, int64_t out_stride, Scratch& w,
              std::vector<int64_t>& pos) {
  const int64_t D = sh.head_dim, G = sh.num_heads / sh.num_kv_heads;
  const int64_t M = (t.row1 - t.row0) * G;  // query vectors: row-major over (row, head in group)
  const int64_t p0 = c.num_context - c.num_new;
  for (int64_t r = t.row0; r < t.row1; ++r)
    for (int64_t hh = 0; hh < G; ++hh) {
      const int64_t m = (r - t.row0) * G + hh;
      const float* src = q + (c.start + r) * q_stride + (t.kv_head * G + hh) * D;
      for (int64_t d = 0; d < D; ++d) w.q[m * D + d] = src[d] * sh.scale;
      pos[m] = p0 + r;
    }
  std::fill(w.o.begin(), w.o.begin() + M * D, 0.f);
  std::fill(w.max.begin(), w.max.begin() + M, -std::numeric_limits<float>::infinity());
  std::fill(w.sum.begin(), w.sum.begin() + M, 0.f);
  const int64_t end = p0 + t.row1;  // keys the last row sees
  const int64_t begin = sh.window ? std::max<int64_t>(0, p0 + t.row0 - sh.window + 1) : 0;  // the first row's first
  for (int64_t c0 = begin; c0 < end; c0 += kKeys) {
    const int64_t nc = std::min(kKeys, end - c0);
    load_tile(kc, vc, c, sh, t.kv_head * D, c0, nc, w.kt.data(), w.v.data());
    for_rows(M, D, w.kt.data(), w.v.data(), nc, w, /*scores=*/true);
    softmax_tile(M, pos.data(), c0, nc, sh, w);
    for_rows(M, D, w.kt.data(), w.v.data(), nc, w, /*scores=*/false);
  }
  for (int64_t r = t.row0; r < t.row1; ++r)
    for (int64_t hh = 0; hh < G; ++hh) {
      const int64_t m = (r - t.row0) * G + hh;
      float* dst = out + (c.start + r) * out_stride + (t.kv_head * G + hh) * D;
      const float inv = 1.f / w.sum[m];
      for (int64_t d = 0; d < D; ++d) dst[d] = w.o[m * D + d] * inv;
    }
}

// Every chunk's queries (rows of q, head h at column h * D) attend causally over their sequence's
// cached keys (within sh.window of them); results go to the same rows and columns of out.
// cache (2, blocks, block_size, Hkv, D).
template <typename T>
void attend(const float* q, int64_t q_stride, const Tensor& cache, const std::vector<Chunk>& chunks, const Shape& sh,
            float* out, int64_t out_stride) {
  const int64_t D = sh.head_dim, G = sh.num_heads / sh.num_kv_heads;
  const int64_t rows_per_task = std::max<int64_t>(1, (96 + G - 1) / G);  // about 96 query vectors a task
  std::vector<Task> tasks;
  for (int64_t i = 0; i < static_cast<int64_t>(chunks.size()); ++i) {
    const Chunk& c = chunks[i];
    const int64_t p0 = c.num_context - c.num_new;
    for (int64_t g = 0; g < sh.num_kv_heads; ++g)
      for (int64_t r0 = 0; r0 < c.num_new; r0 += rows_per_task) {
        const int64_t r1 = std::min(c.num_new, r0 + rows_per_task);
        const int64_t keys = sh.window ? std::min(p0 + r1, sh.window + r1 - r0) : p0 + r1;
        tasks.push_back({i, g, r0, r1, (r1 - r0) * keys});
      }
  }
  // longest first: the causal tiles differ in cost
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  const T* kc = cache[0].data_ptr<T>();
  const T* vc = cache[1].data_ptr<T>();
  // (the pool gives the next task to whichever thread is free)
  gq::parallel_tasks(static_cast<int64_t>(tasks.size()), [&](int64_t i) {
    thread_local Scratch w;
    thread_local std::vector<int64_t> pos;
    w.fit(rows_per_task * G, D);
    pos.resize(rows_per_task * G);
    run_task<T>(tasks[i], chunks[tasks[i].chunk], sh, kc, vc, q, q_stride, out, out_stride, w, pos);
  });
}

}  // namespace prefill
