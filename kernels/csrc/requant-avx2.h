/* ef_qs8_requant (qs8-gemm/qs8-gemm.h) on 8 float lanes: one definition for every AVX2 kernel
 * with int8 output (the qs8 epilogue, depthwise convolution, the residual add, quantize).
 * Bit-exact with the scalar rule: multiply by the inverse scale, clamp in float with max then
 * min (max_ps(NaN, lo) = lo, as the scalar compare), round to nearest even (cvtps under the
 * default MXCSR, like nearbyintf), add the zero point. The results lie in [-128, 127], so the
 * saturating packs are exact. */
#pragma once
#include "common.h"

#if EF_ARCH_X86
#include <immintrin.h>

/* The per-call constants: inv_scale, the float bounds -128 - zp and 127 - zp, and zp. */
typedef struct {
  __m256 inv_scale, lo, hi;
  __m256i zp;
} ef_requant8;

EF_INLINE EF_TARGET_AVX2 ef_requant8 ef_requant8_init__avx2(float inv_scale, int32_t zp) {
  const ef_requant8 r = {_mm256_set1_ps(inv_scale), _mm256_set1_ps((float)(-128 - zp)), _mm256_set1_ps((float)(127 - zp)),
                         _mm256_set1_epi32(zp)};
  return r;
}

/* The 8 int8 results of y, in the low 8 bytes. */
EF_INLINE EF_TARGET_AVX2 __m128i ef_requant_8__avx2(__m256 y, const ef_requant8* r) {
  const __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(y, r->inv_scale), r->lo), r->hi);
  const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(t), r->zp);
  const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
  return _mm_packs_epi16(q16, q16);
}
#endif
