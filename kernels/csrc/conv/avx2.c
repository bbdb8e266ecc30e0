/* AVX2 depthwise 3x3 kernels, one call per run of output pixels.
 *
 * fp32: 8 channels per step, taps accumulated with FMA.
 * int8: 16 channels per step on the tap-pair weights (conv.h, ef_dwconv_qs8_weights). The
 *   activations of taps 2q and 2q + 1 are interleaved byte by byte (punpcklbw/punpckhbw),
 *   sign-extended to int16 pairs, and one vpmaddwd against the paired weights adds both taps'
 *   products into int32: 5 multiply-adds per 8 channels for the 9 taps, exact (a pair sums to
 *   at most 2 * 128 * 128). The zero point leaves at the end as zp_sum. An 8-channel step and
 *   the scalar definition take the channel tail. */
#include "conv/conv.h"

#if EF_ARCH_X86
#include <immintrin.h>

#include "requant-avx2.h"

static EF_TARGET_AVX2 void ef_f32_dwconv_minmax_ukernel_9p8c__avx2(size_t c, size_t n, const float* const* taps,
                                                                   const float* w, const float* bias, float* y, float lo,
                                                                   float hi) {
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  for (size_t px = 0; px < n; px++, taps += 9, y += c) {
    size_t ch = 0;
    for (; ch + 8 <= c; ch += 8) {
      __m256 acc = _mm256_setzero_ps();
      for (size_t t = 0; t < 9; t++) acc = _mm256_fmadd_ps(_mm256_loadu_ps(taps[t] + ch), _mm256_loadu_ps(w + t * c + ch), acc);
      acc = _mm256_add_ps(acc, _mm256_loadu_ps(bias + ch));
      _mm256_storeu_ps(y + ch, _mm256_min_ps(_mm256_max_ps(acc, vlo), vhi));
    }
    ef_dwconv_f32_channels(ch, c, taps, w, bias, y, lo, hi);
  }
}

/* The per-call constants of the int8 epilogue. */
typedef struct {
  __m256 x_scale, lo, hi;
  ef_requant8 requant;
} qs8_epilogue;

/* 8 channels from ch: exact int32 sums -> int8, the float sequence of ef_dwconv_qs8_out. */
EF_INLINE EF_TARGET_AVX2 void qs8_store_8(__m256i acc, size_t ch, const float* bias, const float* w_scale,
                                          const qs8_epilogue* e, int8_t* y) {
  const __m256 s = _mm256_mul_ps(e->x_scale, _mm256_loadu_ps(w_scale + ch));
  __m256 yv = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), s), _mm256_loadu_ps(bias + ch));
  yv = _mm256_min_ps(_mm256_max_ps(yv, e->lo), e->hi);
  _mm_storel_epi64((__m128i*)(y + ch), ef_requant_8__avx2(yv, &e->requant));
}

static EF_TARGET_AVX2 void ef_qs8_dwconv_minmax_ukernel_9p16c__avx2(size_t c, size_t n, const int8_t* const* taps,
                                                                    const ef_dwconv_qs8_weights* wt, const float* bias,
                                                                    int8_t* y, const ef_dwconv_params* p) {
  const qs8_epilogue e = {_mm256_set1_ps(p->x_scale), _mm256_set1_ps(p->out_min), _mm256_set1_ps(p->out_max),
                          ef_requant8_init__avx2(p->out_inv_scale, p->out_zp)};
  for (size_t px = 0; px < n; px++, taps += 9, y += c) {
    size_t ch = 0;
    for (; ch + 16 <= c; ch += 16) {
      __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
      for (size_t q = 0; q < 5; q++) {
        const __m128i xa = _mm_loadu_si128((const __m128i*)(taps[2 * q] + ch));
        const __m128i xb = _mm_loadu_si128((const __m128i*)(taps[q < 4 ? 2 * q + 1 : 8] + ch));
        const int16_t* wq = wt->pairs + (q * c + ch) * 2;
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_unpacklo_epi8(xa, xb)),
                                                    _mm256_loadu_si256((const __m256i*)wq)));
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_unpackhi_epi8(xa, xb)),
                                                    _mm256_loadu_si256((const __m256i*)(wq + 16))));
      }
      lo = _mm256_sub_epi32(lo, _mm256_loadu_si256((const __m256i*)(wt->zp_sum + ch)));
      hi = _mm256_sub_epi32(hi, _mm256_loadu_si256((const __m256i*)(wt->zp_sum + ch + 8)));
      qs8_store_8(lo, ch, bias, p->w_scale, &e, y);
      qs8_store_8(hi, ch + 8, bias, p->w_scale, &e, y);
    }
    if (ch + 8 <= c) {
      __m256i lo = _mm256_setzero_si256();
      for (size_t q = 0; q < 5; q++) {
        const __m128i xa = _mm_loadl_epi64((const __m128i*)(taps[2 * q] + ch));
        const __m128i xb = _mm_loadl_epi64((const __m128i*)(taps[q < 4 ? 2 * q + 1 : 8] + ch));
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_unpacklo_epi8(xa, xb)),
                                                    _mm256_loadu_si256((const __m256i*)(wt->pairs + (q * c + ch) * 2))));
      }
      qs8_store_8(_mm256_sub_epi32(lo, _mm256_loadu_si256((const __m256i*)(wt->zp_sum + ch))), ch, bias, p->w_scale,
                  &e, y);
      ch += 8;
    }
    ef_dwconv_qs8_channels(ch, c, taps, wt->w, bias, y, p);
  }
}

const ef_conv_config ef_conv_config_avx2 = {
    .isa = "avx2",
    .dw3x3_f32 = ef_f32_dwconv_minmax_ukernel_9p8c__avx2,
    .dw3x3_qs8 = ef_qs8_dwconv_minmax_ukernel_9p16c__avx2,
};
#endif
