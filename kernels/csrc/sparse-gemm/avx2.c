/* AVX2 sparse-gemm kernels.
 *
 * dot (GEMV): 8 nonzeros per step; the uint16 columns are widened and the activations
 * gathered (vgatherdps / vpgatherdd). For int8 the gathered lanes hold x in their low 16
 * bits with zero above, and the weights are sign-extended to int32, so vpmaddwd computes
 * x * w + 0 * (high half) exactly -- no saturation, no widening multiply.
 *
 * mvec (GEMM, M >= 4): each nonzero is broadcast and multiplied with 8 consecutive rows of
 * the transposed activations; fp32 in tiles of 8 channels x 8 rows transposed in registers
 * on the way out, or (many nonzeros per channel) up to 32 rows of one channel per pass like
 * int8. */
#include "sparse-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#include "nibbles-avx2.h"

EF_INLINE EF_TARGET_AVX2 float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

EF_INLINE EF_TARGET_AVX2 int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

static EF_TARGET_AVX2 void ef_f32_spmm_dot_ukernel__avx2(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m,
                                                         const void* x, float* y, const ef_sparse_params* p) {
  const float* val = w->val;
  for (size_t r = 0; r < m; r++) {
    const float* xr = (const float*)x + r * w->k;
    for (size_t n = n0; n < n1; n++) {
      uint32_t j = w->row_ptr[n];
      const uint32_t end = w->row_ptr[n + 1];
      __m256 acc = _mm256_setzero_ps();
      for (; j + 8 <= end; j += 8) {
        const __m256i idx = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(w->col + j)));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(val + j), _mm256_i32gather_ps(xr, idx, 4), acc);
      }
      float s = hsum_ps(acc);
      for (; j < end; j++) s += val[j] * xr[w->col[j]];
      y[r * w->n + n] = ef_sparse_f32_out(s, w->bias[n], p->out_min, p->out_max);
    }
  }
}

static EF_TARGET_AVX2 void ef_qs8_spmm_dot_ukernel__avx2(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m,
                                                         const void* x, float* y, const ef_sparse_params* p) {
  const int8_t* val = w->val;
  for (size_t r = 0; r < m; r++) {
    const int32_t* xr = (const int32_t*)x + r * w->k;
    for (size_t n = n0; n < n1; n++) {
      uint32_t j = w->row_ptr[n];
      const uint32_t end = w->row_ptr[n + 1];
      /* two independent accumulators hide the gather latency a little */
      __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
      for (; j + 16 <= end; j += 16) {
        const __m256i i0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(w->col + j)));
        const __m256i i1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(w->col + j + 8)));
        const __m256i w0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(val + j)));
        const __m256i w1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(val + j + 8)));
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_i32gather_epi32((const int*)xr, i0, 4), w0));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_i32gather_epi32((const int*)xr, i1, 4), w1));
      }
      uint32_t raw = (uint32_t)hsum_epi32(_mm256_add_epi32(acc0, acc1));
      for (; j < end; j++) raw += (uint32_t)((int16_t)xr[w->col[j]] * val[j]);
      y[r * w->n + n] = ef_sparse_qs8_out((int32_t)raw, p->x_zp[r], w->wsum[n], p->x_scale[r], w->w_scale[n], w->bias[n], p->out_min, p->out_max);
    }
  }
}

/* In place: v[j] lane i -> v[i] lane j (an 8 x 8 float transpose, 24 shuffles). */
EF_INLINE EF_TARGET_AVX2 void transpose_8x8(__m256 v[8]) {
  __m256 t[8], u[8];
  for (size_t i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  }
  for (size_t i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (size_t i = 0; i < 4; i++) {
    v[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    v[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

/* Stores 8 results of output column n for rows r0..r0+7 (fewer at the end of M). */
EF_INLINE EF_TARGET_AVX2 void store_column(float* y, size_t ld, size_t r0, size_t m, __m256 v) {
  float tmp[8];
  _mm256_storeu_ps(tmp, v);
  for (size_t i = 0; i < 8 && r0 + i < m; i++) y[(r0 + i) * ld] = tmp[i];
}

/* One output channel at a time, up to 32 rows per pass: each nonzero's broadcast serves 4
 * row vectors; the results go out as columns of the [M][N] output, element by element. */
static EF_TARGET_AVX2 void f32_mvec_columns(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, size_t mp,
                                            const float* x, float* y, const ef_sparse_params* p) {
  const float* val = w->val;
  for (size_t n = n0; n < n1; n++) {
    const uint32_t begin = w->row_ptr[n], end = w->row_ptr[n + 1];
    const __m256 bias = _mm256_set1_ps(w->bias[n]);
    for (size_t r0 = 0; r0 < mp; r0 += 32) {
      const size_t tiles = EF_MIN(4, (mp - r0) / 8);
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (uint32_t j = begin; j < end; j++) {
        const __m256 wv = _mm256_set1_ps(val[j]);
        const float* xk = x + (size_t)w->col[j] * mp + r0;
        for (size_t t = 0; t < tiles; t++) acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xk + 8 * t), acc[t]);
      }
      for (size_t t = 0; t < tiles; t++) {
        __m256 v = _mm256_add_ps(acc[t], bias);
        v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(p->out_min)), _mm256_set1_ps(p->out_max));
        store_column(y + n, w->n, r0 + 8 * t, m, v);
      }
    }
  }
}

/* Tiles of 8 output channels x 8 rows: each channel's nonzeros are broadcast against 8
 * consecutive rows of the transposed activations, and the 8 x 8 results are transposed in
 * registers so that each row's 8 channels leave in one store. */
static EF_TARGET_AVX2 void f32_mvec_tiles(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, size_t mp,
                                          const float* x, float* y, const ef_sparse_params* p) {
  const float* val = w->val;
  const __m256 lo = _mm256_set1_ps(p->out_min), hi = _mm256_set1_ps(p->out_max);
  for (size_t n = n0; n < n1; n += 8) {
    const size_t nb = EF_MIN(8, n1 - n);
    /* lanes j < nb of a row's store */
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nb), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (size_t r0 = 0; r0 < m; r0 += 8) {
      __m256 acc[8];
      for (size_t j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
      for (size_t j = 0; j < nb; j++) {
        for (uint32_t e = w->row_ptr[n + j]; e < w->row_ptr[n + j + 1]; e++)
          acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(val[e]), _mm256_loadu_ps(x + (size_t)w->col[e] * mp + r0), acc[j]);
        acc[j] = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(acc[j], _mm256_set1_ps(w->bias[n + j])), lo), hi);
      }
      transpose_8x8(acc);
      for (size_t i = 0; i < 8 && r0 + i < m; i++) {
        float* out = y + (r0 + i) * w->n + n;
        if (nb == 8) _mm256_storeu_ps(out, acc[i]);
        else _mm256_maskstore_ps(out, lanes, acc[i]);
      }
    }
  }
}

/* Few nonzeros per channel (pointwise convolutions: K of 16..64 at 75 % sparsity) leave the
 * column stores as most of the work: tiles. Many: the 4-fold reuse of each broadcast in the
 * column kernel wins (kernels.sparse_linear fp32, 75 %, one thread on Zen 4: 256x96x16 22 ->
 * 15 us with tiles, 256x16x96 18 -> 23 us). Both sum every output over its channel's
 * nonzeros in order with FMA, so the choice does not change a bit of the result. */
#define F32_MVEC_TILES_MAX_NNZ_PER_ROW 20

static EF_TARGET_AVX2 void ef_f32_spmm_mvec_ukernel__avx2(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m,
                                                          size_t mp, const void* xt, float* y, const ef_sparse_params* p) {
  if (w->nnz < F32_MVEC_TILES_MAX_NNZ_PER_ROW * w->n) f32_mvec_tiles(w, n0, n1, m, mp, xt, y, p);
  else f32_mvec_columns(w, n0, n1, m, mp, xt, y, p);
}

static EF_TARGET_AVX2 void ef_qs8_spmm_mvec_ukernel__avx2(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m,
                                                          size_t mp, const void* xt, float* y, const ef_sparse_params* p) {
  const int8_t* val = w->val;
  const int32_t* x = xt;
  for (size_t n = n0; n < n1; n++) {
    const uint32_t begin = w->row_ptr[n], end = w->row_ptr[n + 1];
    for (size_t r0 = 0; r0 < mp; r0 += 32) {
      const size_t tiles = EF_MIN(4, (mp - r0) / 8);
      __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
      for (uint32_t j = begin; j < end; j++) {
        const __m256i wv = _mm256_set1_epi32(val[j]); /* sign-extended; x's high halves are 0 */
        const int32_t* xk = x + (size_t)w->col[j] * mp + r0;
        for (size_t t = 0; t < tiles; t++)
          acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(wv, _mm256_loadu_si256((const __m256i*)(xk + 8 * t))));
      }
      for (size_t t = 0; t < tiles; t++) {
        int32_t raw[8];
        _mm256_storeu_si256((__m256i*)raw, acc[t]);
        for (size_t i = 0; i < 8 && r0 + 8 * t + i < m; i++) {
          const size_t r = r0 + 8 * t + i;
          y[r * w->n + n] = ef_sparse_qs8_out(raw[i], p->x_zp[r], w->wsum[n], p->x_scale[r], w->w_scale[n], w->bias[n], p->out_min, p->out_max);
        }
      }
    }
  }
}

/* Windows layout (see sparse-gemm.h): one step = broadcast 16 activations, unpack the 32
 * 4-bit columns (broadcast, shift the upper lane by 4, mask), vpshufb the slots' activations,
 * vpmaddubsw(|w|, sign(x, w)) + vpmaddwd(ones) = per-row int32 sums. */
EF_INLINE EF_TARGET_AVX2 __m256i spw_step(const int8_t* rec, const int8_t* x) {
  const __m256i xv = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)x));
  const __m256i cols = ef_unpack_nibbles__avx2((const uint8_t*)rec);
  const __m256i w = _mm256_loadu_si256((const __m256i*)(rec + EF_SPW_W_OFFSET));
  const __m256i xs = _mm256_shuffle_epi8(xv, cols);
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xs, w)), _mm256_set1_epi16(1));
}

static EF_TARGET_AVX2 void ef_qs8_spmv_windows_ukernel_8x16__avx2(const ef_spw_packed* w, size_t g0, size_t g1,
                                                                 const int8_t* xw, int32_t* raw) {
  for (size_t g = g0; g < g1; g++) {
    /* two accumulators: consecutive steps do not wait for each other's add */
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    uint32_t s = w->group_step[g];
    const uint32_t end = w->group_step[g + 1];
    const int8_t* rec = w->step_data + (size_t)s * EF_SPW_STEP_BYTES;
    for (; s + 2 <= end; s += 2, rec += 2 * EF_SPW_STEP_BYTES) {
      acc0 = _mm256_add_epi32(acc0, spw_step(rec, xw + (size_t)w->step_window[s] * EF_SPW_WINDOW));
      acc1 = _mm256_add_epi32(acc1, spw_step(rec + EF_SPW_STEP_BYTES, xw + (size_t)w->step_window[s + 1] * EF_SPW_WINDOW));
    }
    if (s < end) acc0 = _mm256_add_epi32(acc0, spw_step(rec, xw + (size_t)w->step_window[s] * EF_SPW_WINDOW));
    const __m256i acc = _mm256_add_epi32(acc0, acc1);
    if ((g + 1) * EF_SPW_ROWS <= w->n) {
      _mm256_storeu_si256((__m256i*)(raw + g * EF_SPW_ROWS), acc);
    } else {
      int32_t tmp[EF_SPW_ROWS];
      _mm256_storeu_si256((__m256i*)tmp, acc);
      memcpy(raw + g * EF_SPW_ROWS, tmp, (w->n - g * EF_SPW_ROWS) * sizeof(int32_t));
    }
  }
}

const ef_sparse_config ef_sparse_config_avx2 = {
    .isa = "avx2",
    .dot = {ef_f32_spmm_dot_ukernel__avx2, ef_qs8_spmm_dot_ukernel__avx2},
    .mvec = {ef_f32_spmm_mvec_ukernel__avx2, ef_qs8_spmm_mvec_ukernel__avx2},
    .spw = ef_qs8_spmv_windows_ukernel_8x16__avx2,
};
#endif /* EF_ARCH_X86 */

/* ------------------------------------------------------------------ bitmask layout */
#if EF_ARCH_X86
/* Bitmask layout (sparse-gemm.h) without VNNI or vpexpandb (Haswell, Zen 1-3): 16 columns
 * at a time, the two mask bytes pick two 8-byte pshufb indices from ef_spb_expand_table
 * (the second shifted by the first byte's popcount), the shuffle of a 16-byte load puts the
 * nonzeros in their columns, and vpmaddwd with int16 activations sums them exactly. */
#define SPB_TARGET_AVX2 __attribute__((target("avx2,fma,f16c,popcnt")))

EF_INLINE SPB_TARGET_AVX2 __m256i spb_expand16(uint32_t bits, const int8_t* v) {
  const uint32_t b0 = bits & 0xFF, b1 = (bits >> 8) & 0xFF;
  const __m128i lo = _mm_loadl_epi64((const __m128i*)ef_spb_expand_table[b0]);
  const __m128i hi = _mm_add_epi8(_mm_loadl_epi64((const __m128i*)ef_spb_expand_table[b1]),
                                  _mm_set1_epi8((char)_mm_popcnt_u32(b0)));
  const __m128i vals = _mm_loadu_si128((const __m128i*)v);
  return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(vals, _mm_unpacklo_epi64(lo, hi)));
}

/* [sum a0, sum a1, sum a2, sum a3] */
EF_INLINE SPB_TARGET_AVX2 __m128i spb_hsum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
  const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
  return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

EF_INLINE SPB_TARGET_AVX2 void spb_groups_avx2(const size_t MR, const ef_spb_packed* w, size_t g0, size_t g1,
                                               const int16_t* x, size_t ldx, int32_t* raw, size_t ldr) {
  const size_t chunks = w->chunks;
  for (size_t g = g0; g < g1; g++) {
    __m256i acc[EF_SPB_MR][EF_SPB_ROWS];
    for (size_t r = 0; r < MR; r++)
      for (size_t i = 0; i < EF_SPB_ROWS; i++) acc[r][i] = _mm256_setzero_si256();
    const uint64_t* mask = w->mask + g * chunks * EF_SPB_ROWS;
    const int8_t* v = w->val + w->group_val[g];
    for (size_t c = 0; c < chunks; c++) {
      for (size_t i = 0; i < EF_SPB_ROWS; i++) {
        const uint64_t m = *mask++;
        /* start of each 16-column piece */
        const size_t o1 = (size_t)_mm_popcnt_u32((uint32_t)m & 0xFFFF);
        const size_t o2 = (size_t)_mm_popcnt_u32((uint32_t)m);
        const size_t o3 = o2 + (size_t)_mm_popcnt_u32((uint32_t)(m >> 32) & 0xFFFF);
        const __m256i w0 = spb_expand16((uint32_t)m, v);
        const __m256i w1 = spb_expand16((uint32_t)m >> 16, v + o1);
        const __m256i w2 = spb_expand16((uint32_t)(m >> 32), v + o2);
        const __m256i w3 = spb_expand16((uint32_t)(m >> 48), v + o3);
        v += (size_t)_mm_popcnt_u64(m);
        for (size_t r = 0; r < MR; r++) {
          const int16_t* xc = x + r * ldx + c * EF_SPB_CHUNK;
          __m256i s = _mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i*)xc));
          s = _mm256_add_epi32(s, _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i*)(xc + 16))));
          s = _mm256_add_epi32(s, _mm256_madd_epi16(w2, _mm256_loadu_si256((const __m256i*)(xc + 32))));
          s = _mm256_add_epi32(s, _mm256_madd_epi16(w3, _mm256_loadu_si256((const __m256i*)(xc + 48))));
          acc[r][i] = _mm256_add_epi32(acc[r][i], s);
        }
      }
    }
    for (size_t r = 0; r < MR; r++)
      _mm_storeu_si128((__m128i*)(raw + r * ldr + g * EF_SPB_ROWS), spb_hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
  }
}

static SPB_TARGET_AVX2 void ef_qs8_spmv_bitmask_ukernel_4x64__avx2(const ef_spb_packed* w, size_t g0, size_t g1,
                                                                   size_t mr, const void* x, size_t ldx, int32_t* raw,
                                                                   size_t ldr) {
  switch (mr) {
    case 1: spb_groups_avx2(1, w, g0, g1, x, ldx, raw, ldr); break;
    case 2: spb_groups_avx2(2, w, g0, g1, x, ldx, raw, ldr); break;
    case 3: spb_groups_avx2(3, w, g0, g1, x, ldx, raw, ldr); break;
    default: spb_groups_avx2(4, w, g0, g1, x, ldx, raw, ldr); break;
  }
}

const ef_spb_config ef_spb_config_avx2 = {
    .isa = "avx2",
    .x_format = EF_SPB_X_S16,
    .ukernel = ef_qs8_spmv_bitmask_ukernel_4x64__avx2,
    .out_row = ef_sparse_qs8_out_row__generic,
};
#endif /* EF_ARCH_X86 */
