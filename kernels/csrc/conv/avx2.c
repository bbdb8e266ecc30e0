/* AVX2 depthwise 3x3 kernels: 8 channels per step (16 for fp32 when available), taps
 * accumulated with FMA (fp32) or exact int32 multiplies (int8: x - x_zp in [-255, 255]
 * times w in [-128, 127] needs more than int16, so vpmulld on sign-extended lanes). The
 * channel tail (c % 8) runs the scalar definition. */
#include "conv/conv.h"

#if EF_ARCH_X86
#include <immintrin.h>

static EF_TARGET_AVX2 void ef_f32_dwconv_minmax_ukernel_9p8c__avx2(size_t c, const float* const* taps, const float* w,
                                                                   const float* bias, float* y, float lo, float hi) {
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  size_t ch = 0;
  for (; ch + 8 <= c; ch += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (size_t t = 0; t < 9; t++) acc = _mm256_fmadd_ps(_mm256_loadu_ps(taps[t] + ch), _mm256_loadu_ps(w + t * c + ch), acc);
    acc = _mm256_add_ps(acc, _mm256_loadu_ps(bias + ch));
    _mm256_storeu_ps(y + ch, _mm256_min_ps(_mm256_max_ps(acc, vlo), vhi));
  }
  for (; ch < c; ch++) {
    float acc = 0.0f;
    for (size_t t = 0; t < 9; t++) acc += taps[t][ch] * w[t * c + ch];
    y[ch] = ef_clamp(acc + bias[ch], lo, hi);
  }
}

static EF_TARGET_AVX2 void ef_qs8_dwconv_minmax_ukernel_9p8c__avx2(size_t c, const int8_t* const* taps, const int8_t* w,
                                                                   const float* bias, int8_t* y, const ef_dwconv_params* p) {
  const __m256i vzp = _mm256_set1_epi32(p->x_zp);
  const __m256 vlo = _mm256_set1_ps(p->out_min), vhi = _mm256_set1_ps(p->out_max);
  const __m256 vxs = _mm256_set1_ps(p->x_scale), vinv = _mm256_set1_ps(p->out_inv_scale);
  const __m256 qlo = _mm256_set1_ps((float)(-128 - p->out_zp)), qhi = _mm256_set1_ps((float)(127 - p->out_zp));
  const __m256i vozp = _mm256_set1_epi32(p->out_zp);
  size_t ch = 0;
  for (; ch + 8 <= c; ch += 8) {
    __m256i acc = _mm256_setzero_si256();
    for (size_t t = 0; t < 9; t++) {
      const __m256i xv = _mm256_sub_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(taps[t] + ch))), vzp);
      const __m256i wv = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(w + t * c + ch)));
      acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(xv, wv));
    }
    /* The same float sequence as ef_dwconv_qs8_out. */
    const __m256 s = _mm256_mul_ps(vxs, _mm256_loadu_ps(p->w_scale + ch));
    __m256 yv = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), s), _mm256_loadu_ps(bias + ch));
    yv = _mm256_min_ps(_mm256_max_ps(yv, vlo), vhi);
    __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(yv, vinv), qlo), qhi);
    const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(t), vozp);
    const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64((__m128i*)(y + ch), _mm_packs_epi16(q16, q16));
  }
  for (; ch < c; ch++) {
    int32_t acc = 0;
    for (size_t t = 0; t < 9; t++) acc += ((int32_t)taps[t][ch] - p->x_zp) * w[t * c + ch];
    y[ch] = ef_dwconv_qs8_out(acc, ch, bias, p);
  }
}

const ef_conv_config ef_conv_config_avx2 = {
    .isa = "avx2",
    .dw3x3_f32 = ef_f32_dwconv_minmax_ukernel_9p8c__avx2,
    .dw3x3_qs8 = ef_qs8_dwconv_minmax_ukernel_9p8c__avx2,
};
#endif
