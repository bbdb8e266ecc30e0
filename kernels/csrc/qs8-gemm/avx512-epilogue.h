/* AVX-512 epilogue for the qs8 kernels that accumulate u8 (a + 128) x s8 sums (AMX): offset
 * and zero-point correction, scale, bias, clamp, and fp32 store or int8 requantization for one
 * 16-column block of one row, with the operation sequence of the scalar definition in
 * qs8-gemm.h (bit-exact, as ef_qs8_store_8__avx2 is for 8 columns). */
#pragma once
#include "qs8-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

/* The per-column constants of one 16-column block and the call's output constants, set once
 * for all rows of a tile. (Held in registers here rather than read from params per row: the
 * stores through the output pointer may alias params, so the compiler would reload and
 * reconvert them after every store.) */
typedef struct {
  __m512i colsum, w_zp, out_zp;
  __m512 w_scale, bias, out_min, out_max, out_inv_scale, q_lo, q_hi;
  int has_w_zp, out_int8;
  uint32_t k;
} ef_qs8_cols16;

EF_INLINE EF_TARGET_AVX512 ef_qs8_cols16 ef_qs8_load_cols16__avx512(const uint8_t* block, int has_w_zp,
                                                                   const ef_qs8_gemm_params* p) {
  ef_qs8_cols16 v;
  v.colsum = _mm512_loadu_si512(block);
  v.w_zp = _mm512_loadu_si512(block + 16 * 4);
  v.w_scale = _mm512_loadu_ps(block + 32 * 4);
  v.bias = _mm512_loadu_ps(block + 48 * 4);
  v.out_min = _mm512_set1_ps(p->out_min);
  v.out_max = _mm512_set1_ps(p->out_max);
  v.out_inv_scale = _mm512_set1_ps(p->out_inv_scale);
  v.q_lo = _mm512_set1_ps((float)(-128 - p->out_zp));
  v.q_hi = _mm512_set1_ps((float)(127 - p->out_zp));
  v.out_zp = _mm512_set1_epi32(p->out_zp);
  v.has_w_zp = has_w_zp;
  v.out_int8 = p->out_int8;
  v.k = (uint32_t)p->k;
  return v;
}

/* ef_qs8_requant on 16 lanes (the rule of requant-avx2.h: multiply, clamp with max then min,
 * round to nearest even, add the zero point): the 16 int8 results, exact narrowing. */
EF_INLINE EF_TARGET_AVX512 __m128i ef_requant_16__avx512(__m512 y, __m512 inv_scale, __m512 lo, __m512 hi, __m512i zp) {
  const __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(y, inv_scale), lo), hi);
  return _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(t), zp));
}

/* The float half of the epilogue: exact int32 sums acc of 16 columns, s = a_scale * w_scale
 * -> y = (float)acc * s + bias, clamped (ef_qs8_dequant's roundings), stored as fp32 or
 * requantized to int8. The nc lanes in `mask` are stored to c (a full mask takes a plain
 * store: masked narrowing stores to memory cost several times more). */
EF_INLINE EF_TARGET_AVX512 void ef_qs8_finish_16__avx512(__m512i acc, __m512 s, __mmask16 mask,
                                                         const ef_qs8_cols16* v, void* c) {
  __m512 y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), s), v->bias);
  y = _mm512_min_ps(_mm512_max_ps(y, v->out_min), v->out_max);

  if (!v->out_int8) {
    if (mask == 0xFFFF) _mm512_storeu_ps(c, y);
    else _mm512_mask_storeu_ps(c, mask, y);
    return;
  }
  const __m128i q = ef_requant_16__avx512(y, v->out_inv_scale, v->q_lo, v->q_hi, v->out_zp);
  if (mask == 0xFFFF) _mm_storeu_si128((__m128i*)c, q);
  else _mm_mask_storeu_epi8(c, mask, q);
}

/* The activation offset of one row for all 16 columns: (a_zp + 128) * colsum. */
EF_INLINE EF_TARGET_AVX512 __m512i ef_qs8_offset_16__avx512(int32_t a_zp, const ef_qs8_cols16* v) {
  return _mm512_mullo_epi32(v->colsum, _mm512_set1_epi32((int32_t)((uint32_t)a_zp + 128u)));
}

/* raw[j] = sum_k (a[k] + 128) * w[j, k] for the 16 columns of one block, one row. */
EF_INLINE EF_TARGET_AVX512 void ef_qs8_store_16__avx512(__m512i raw, __mmask16 mask, int32_t a_zp, float a_scale,
                                                        int32_t rowsum, const ef_qs8_cols16* v, void* c) {
  /* acc = raw - (a_zp + 128)*colsum - w_zp*rowsum + w_zp*(K*a_zp), wrapping: equal mod 2^32 to
   * ef_qs8_correct(raw - 128*colsum, ...), the exact int32 result. (w_zp = 0 everywhere:
   * the last product is 0, skipped.) */
  __m512i acc = _mm512_sub_epi32(raw, ef_qs8_offset_16__avx512(a_zp, v));
  if (v->has_w_zp) {
    const uint32_t zp_term = v->k * (uint32_t)a_zp - (uint32_t)rowsum;
    acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(v->w_zp, _mm512_set1_epi32((int32_t)zp_term)));
  }
  ef_qs8_finish_16__avx512(acc, _mm512_mul_ps(_mm512_set1_ps(a_scale), v->w_scale), mask, v, c);
}

/* Do rows [r0, r0 + n) share one activation scale and zero point (per-tensor activations, the
 * CNN plans' case)? Then the offset and the scale product are the same for all of them. */
EF_INLINE int ef_qs8_rows_share_params(const int32_t* a_zp, const float* a_scale, size_t r0, size_t n) {
  for (size_t r = r0 + 1; r < r0 + n; r++)
    if (a_zp[r] != a_zp[r0] || a_scale[r] != a_scale[r0]) return 0;
  return 1;
}

#endif
