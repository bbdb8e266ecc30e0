/* float32 <-> int8 conversion (qconvert.h): scalar reference and AVX2, 8 elements per step.
 * aarch64 runs the scalar loop, which GCC vectorizes there. */
#include "qconvert/qconvert.h"

#include "qs8-gemm/qs8-gemm.h" /* ef_qs8_requant: the one requantization rule */

void ef_quantize_qs8__scalar(size_t n, const float* x, float inv_scale, int32_t zp, int8_t* q) {
  for (size_t i = 0; i < n; i++) q[i] = ef_qs8_requant(x[i], inv_scale, zp);
}

void ef_dequantize_qs8__scalar(size_t n, const int8_t* q, float scale, int32_t zp, float* y) {
  for (size_t i = 0; i < n; i++) y[i] = ((float)q[i] - (float)zp) * scale;
}

#if EF_ARCH_X86
#include <immintrin.h>

EF_TARGET_AVX2 void ef_quantize_qs8__avx2(size_t n, const float* x, float inv_scale, int32_t zp, int8_t* q) {
  const __m256 inv = _mm256_set1_ps(inv_scale);
  const __m256 lo = _mm256_set1_ps((float)(-128 - zp)), hi = _mm256_set1_ps((float)(127 - zp));
  const __m256i vzp = _mm256_set1_epi32(zp);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 t = _mm256_mul_ps(_mm256_loadu_ps(x + i), inv);
    t = _mm256_min_ps(_mm256_max_ps(t, lo), hi); /* max_ps(NaN, lo) = lo, as the scalar compare */
    const __m256i v = _mm256_add_epi32(_mm256_cvtps_epi32(t), vzp); /* round to nearest even */
    const __m128i v16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64((__m128i*)(q + i), _mm_packs_epi16(v16, v16));
  }
  ef_quantize_qs8__scalar(n - i, x + i, inv_scale, zp, q + i);
}

EF_TARGET_AVX2 void ef_dequantize_qs8__avx2(size_t n, const int8_t* q, float scale, int32_t zp, float* y) {
  const __m256 s = _mm256_set1_ps(scale), z = _mm256_set1_ps((float)zp);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + i))));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_sub_ps(f, z), s));
  }
  ef_dequantize_qs8__scalar(n - i, q + i, scale, zp, y + i);
}
#endif

void ef_quantize_qs8(size_t n, const float* x, float inv_scale, int32_t zp, int8_t* q) {
#if EF_ARCH_X86
  if (ef_arch_flags() & EF_ARCH_X86_AVX2) {
    ef_quantize_qs8__avx2(n, x, inv_scale, zp, q);
    return;
  }
#endif
  ef_quantize_qs8__scalar(n, x, inv_scale, zp, q);
}

void ef_dequantize_qs8(size_t n, const int8_t* q, float scale, int32_t zp, float* y) {
#if EF_ARCH_X86
  if (ef_arch_flags() & EF_ARCH_X86_AVX2) {
    ef_dequantize_qs8__avx2(n, q, scale, zp, y);
    return;
  }
#endif
  ef_dequantize_qs8__scalar(n, q, scale, zp, y);
}
