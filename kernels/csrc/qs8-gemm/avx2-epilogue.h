/* AVX2 epilogue shared by the AVX2 and AVX-VNNI qs8 kernels: zero-point correction, scale,
 * bias, clamp, and fp32 store or int8 requantization for 8 columns of one row, with the
 * same operation sequence as the scalar definition in qs8-gemm.h (bit-exact). */
#pragma once
#include "qs8-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#include "requant-avx2.h"

/* Epilogue for 8 columns of one row: zero-point correction, scale, bias, ReLU, store. */
EF_INLINE EF_TARGET_AVX2 void ef_qs8_store_8__avx2(__m256i raw, size_t col0, size_t nc, int32_t a_zp, float a_scale,
                                      int32_t rowsum, const uint8_t* block, void* c, const ef_qs8_gemm_params* p,
                                      int8_t* q_tmp) {
  const int32_t* colsum = (const int32_t*)block + col0;
  const int32_t* w_zp = (const int32_t*)block + EF_QS8_NR + col0;
  const float* w_scale = (const float*)block + 2 * EF_QS8_NR + col0;
  const float* bias = (const float*)block + 3 * EF_QS8_NR + col0;

  /* acc = raw - a_zp*colsum - w_zp*rowsum + K*a_zp*w_zp   (wrapping, as ef_qs8_correct) */
  const __m256i vzp = _mm256_loadu_si256((const __m256i*)w_zp);
  __m256i acc = _mm256_sub_epi32(raw, _mm256_mullo_epi32(_mm256_set1_epi32(a_zp), _mm256_loadu_si256((const __m256i*)colsum)));
  acc = _mm256_sub_epi32(acc, _mm256_mullo_epi32(vzp, _mm256_set1_epi32(rowsum)));
  acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(vzp, _mm256_set1_epi32((int32_t)((uint32_t)p->k * (uint32_t)a_zp))));

  /* y = (float)acc * (a_scale * w_scale) + bias: the same two roundings as ef_qs8_dequant. */
  const __m256 s = _mm256_mul_ps(_mm256_set1_ps(a_scale), _mm256_loadu_ps(w_scale));
  __m256 y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), s), _mm256_loadu_ps(bias));
  y = _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(p->out_min)), _mm256_set1_ps(p->out_max));

  if (!p->out_int8) {
    if (nc >= 8) {
      _mm256_storeu_ps((float*)c, y);
    } else {
      float tmp[8];
      _mm256_storeu_ps(tmp, y);
      memcpy(c, tmp, nc * sizeof(float));
    }
    return;
  }
  const ef_requant8 r = ef_requant8_init__avx2(p->out_inv_scale, p->out_zp);
  _mm_storel_epi64((__m128i*)q_tmp, ef_requant_8__avx2(y, &r));
  memcpy(c, q_tmp, EF_MIN(nc, 8));
}

#endif
