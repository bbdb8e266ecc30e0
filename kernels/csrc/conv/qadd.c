/* Quantized residual add (qadd.h): scalar reference + AVX2, 8 elements per step. */
#include "conv/qadd.h"

#include <math.h>

EF_INLINE int8_t qadd_one(int8_t a, int8_t b, const ef_qadd_params* p) {
  const float fa = ((float)a - (float)p->a_zp) * p->a_scale;
  const float fb = ((float)b - (float)p->b_zp) * p->b_scale;
  const float lo = (float)(-128 - p->out_zp), hi = (float)(127 - p->out_zp);
  float t = (fa + fb) * p->out_inv_scale;
  t = t > lo ? t : lo;
  t = t < hi ? t : hi;
  return (int8_t)((int32_t)nearbyintf(t) + p->out_zp);
}

void ef_qadd_qs8__scalar(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p) {
  for (size_t i = 0; i < n; i++) y[i] = qadd_one(a[i], b[i], p);
}

#if EF_ARCH_X86
#include <immintrin.h>

EF_TARGET_AVX2 void ef_qadd_qs8__avx2(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p) {
  const __m256 za = _mm256_set1_ps((float)p->a_zp), zb = _mm256_set1_ps((float)p->b_zp);
  const __m256 sa = _mm256_set1_ps(p->a_scale), sb = _mm256_set1_ps(p->b_scale);
  const __m256 inv = _mm256_set1_ps(p->out_inv_scale);
  const __m256 lo = _mm256_set1_ps((float)(-128 - p->out_zp)), hi = _mm256_set1_ps((float)(127 - p->out_zp));
  const __m256i zo = _mm256_set1_epi32(p->out_zp);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 fa = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(a + i))));
    const __m256 fb = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(b + i))));
    const __m256 s = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(fa, za), sa), _mm256_mul_ps(_mm256_sub_ps(fb, zb), sb));
    __m256 t = _mm256_mul_ps(s, inv);
    t = _mm256_min_ps(_mm256_max_ps(t, lo), hi); /* max_ps(NaN, lo) = lo, as the scalar compare */
    const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(t), zo); /* round to nearest even */
    const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64((__m128i*)(y + i), _mm_packs_epi16(q16, q16));
  }
  for (; i < n; i++) y[i] = qadd_one(a[i], b[i], p);
}
#endif

void ef_qadd_qs8(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p) {
#if EF_ARCH_X86
  if (ef_arch_flags() & EF_ARCH_X86_AVX2) {
    ef_qadd_qs8__avx2(n, a, b, y, p);
    return;
  }
#endif
  ef_qadd_qs8__scalar(n, a, b, y, p);
}
