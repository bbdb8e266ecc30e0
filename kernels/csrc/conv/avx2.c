/* AVX2 depthwise 3x3 kernels: taps accumulated with FMA, in fp32 for fp32 and, for int8, on
 * int8 values converted to float (exact: conv.h), 8 or 16 channels per step. The channel
 * tail (c % 8) runs the scalar definition. */
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

/* 8 channels of one output pixel: sum_t x * wf in float (exact, see conv.h), minus x_zp * sum w,
 * then ef_dwconv_qs8_out's float sequence. */
EF_INLINE EF_TARGET_AVX2 __m256 dw_qs8_acc8(const int8_t* const* taps, size_t ch, size_t c, const ef_dwconv_params* p) {
  __m256 acc = _mm256_setzero_ps();
  for (size_t t = 0; t < 9; t++) {
    const __m256 xv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(taps[t] + ch))));
    acc = _mm256_fmadd_ps(xv, _mm256_loadu_ps(p->wf + t * c + ch), acc);
  }
  return _mm256_sub_ps(acc, _mm256_loadu_ps(p->wzp + ch));
}

EF_INLINE EF_TARGET_AVX2 __m256i dw_qs8_out8(__m256 acc, size_t ch, const float* bias, const ef_dwconv_params* p) {
  const __m256 s = _mm256_mul_ps(_mm256_set1_ps(p->x_scale), _mm256_loadu_ps(p->w_scale + ch));
  __m256 yv = _mm256_add_ps(_mm256_mul_ps(acc, s), _mm256_loadu_ps(bias + ch));
  yv = _mm256_min_ps(_mm256_max_ps(yv, _mm256_set1_ps(p->out_min)), _mm256_set1_ps(p->out_max));
  __m256 t = _mm256_mul_ps(yv, _mm256_set1_ps(p->out_inv_scale));
  t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps((float)(-128 - p->out_zp))), _mm256_set1_ps((float)(127 - p->out_zp)));
  return _mm256_add_epi32(_mm256_cvtps_epi32(t), _mm256_set1_epi32(p->out_zp));
}

/* int8 x int8 in float: vpmovsxbd + vcvtdq2ps + one FMA per tap and 8 channels (the weights
 * were converted once per call by the operator), against the int32 vpmulld path (2 uops,
 * 10-cycle latency) that cost ~2x as much. 16 channels per step: two independent chains. */
static EF_TARGET_AVX2 void ef_qs8_dwconv_minmax_ukernel_9p16c__avx2(size_t c, const int8_t* const* taps, const int8_t* w,
                                                                    const float* bias, int8_t* y, const ef_dwconv_params* p) {
  size_t ch = 0;
  for (; ch + 16 <= c; ch += 16) {
    const __m256i q0 = dw_qs8_out8(dw_qs8_acc8(taps, ch, c, p), ch, bias, p);
    const __m256i q1 = dw_qs8_out8(dw_qs8_acc8(taps, ch + 8, c, p), ch + 8, bias, p);
    /* packs work per 128-bit lane: [q0 lo, q1 lo, q0 hi, q1 hi] -> fix the order with permute4x64 */
    const __m256i q16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);
    _mm_storeu_si128((__m128i*)(y + ch),
                     _mm_packs_epi16(_mm256_castsi256_si128(q16), _mm256_extracti128_si256(q16, 1)));
  }
  for (; ch + 8 <= c; ch += 8) {
    const __m256i q = dw_qs8_out8(dw_qs8_acc8(taps, ch, c, p), ch, bias, p);
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
    .dw3x3_qs8 = ef_qs8_dwconv_minmax_ukernel_9p16c__avx2,
};
#endif
