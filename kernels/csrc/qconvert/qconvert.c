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

#include "requant-avx2.h"

EF_TARGET_AVX2 void ef_quantize_qs8__avx2(size_t n, const float* x, float inv_scale, int32_t zp, int8_t* q) {
  const ef_requant8 r = ef_requant8_init__avx2(inv_scale, zp);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm_storel_epi64((__m128i*)(q + i), ef_requant_8__avx2(_mm256_loadu_ps(x + i), &r));
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
