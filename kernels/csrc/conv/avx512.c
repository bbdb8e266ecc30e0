/* AVX-512 depthwise 3x3 kernels (CPUs with AVX-512 VNNI), one call per run of output pixels.
 *
 * int8: 32 channels per step on the tap-pair weights (conv.h), as the AVX2 kernel does with
 *   16: the bytes of taps 2q and 2q + 1 are interleaved (vpunpcklbw/hbw work within 128-bit
 *   lanes, so vperm2i128 puts channels 0-15 and 16-31 back together), sign-extended to int16
 *   pairs, and vpdpwssd multiplies both taps and accumulates in one instruction (exact: a
 *   pair sums to at most 2 * 128 * 128). A 16-channel step and the scalar definition take
 *   the tail. The epilogue is ef_dwconv_qs8_out's float sequence, 16 lanes wide.
 * fp32: 16 channels per step, taps accumulated with FMA in tap order (as the AVX2 kernel). */
#include "conv/conv.h"

#if EF_ARCH_X86
#include <immintrin.h>

#include "qs8-gemm/avx512-epilogue.h"

static EF_TARGET_AVX512 void ef_f32_dwconv_minmax_ukernel_9p16c__avx512f(size_t c, size_t n, const float* const* taps,
                                                                         const float* w, const float* bias, float* y,
                                                                         float lo, float hi) {
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  for (size_t px = 0; px < n; px++, taps += 9, y += c)
    for (size_t ch = 0; ch < c; ch += 16) {
      const __mmask16 m = c - ch >= 16 ? 0xFFFF : (__mmask16)((1u << (c - ch)) - 1u);
      __m512 acc = _mm512_setzero_ps();
      for (size_t t = 0; t < 9; t++)
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, taps[t] + ch), _mm512_maskz_loadu_ps(m, w + t * c + ch), acc);
      acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, bias + ch));
      _mm512_mask_storeu_ps(y + ch, m, _mm512_min_ps(_mm512_max_ps(acc, vlo), vhi));
    }
}

typedef struct {
  __m512 x_scale, lo, hi, inv, qlo, qhi;
  __m512i out_zp;
} qs8_epilogue16;

/* 16 channels from ch: exact int32 sums -> int8, the float sequence of ef_dwconv_qs8_out. */
EF_INLINE EF_TARGET_AVX512 void qs8_store_16(__m512i acc, size_t ch, const float* bias, const float* w_scale,
                                             const qs8_epilogue16* e, int8_t* y) {
  const __m512 s = _mm512_mul_ps(e->x_scale, _mm512_loadu_ps(w_scale + ch));
  __m512 yv = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), s), _mm512_loadu_ps(bias + ch));
  yv = _mm512_min_ps(_mm512_max_ps(yv, e->lo), e->hi);
  _mm_storeu_si128((__m128i*)(y + ch), ef_requant_16__avx512(yv, e->inv, e->qlo, e->qhi, e->out_zp));
}

static EF_TARGET_AVX512 void ef_qs8_dwconv_minmax_ukernel_9p32c__avx512vnni(size_t c, size_t n,
                                                                            const int8_t* const* taps,
                                                                            const ef_dwconv_qs8_weights* wt,
                                                                            const float* bias, int8_t* y,
                                                                            const ef_dwconv_params* p) {
  const qs8_epilogue16 e = {
      _mm512_set1_ps(p->x_scale),  _mm512_set1_ps(p->out_min),
      _mm512_set1_ps(p->out_max),  _mm512_set1_ps(p->out_inv_scale),
      _mm512_set1_ps((float)(-128 - p->out_zp)), _mm512_set1_ps((float)(127 - p->out_zp)),
      _mm512_set1_epi32(p->out_zp)};
  for (size_t px = 0; px < n; px++, taps += 9, y += c) {
    size_t ch = 0;
    for (; ch + 32 <= c; ch += 32) {
      __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
      for (size_t q = 0; q < 5; q++) {
        const __m256i xa = _mm256_loadu_si256((const __m256i*)(taps[2 * q] + ch));
        const __m256i xb = _mm256_loadu_si256((const __m256i*)(taps[q < 4 ? 2 * q + 1 : 8] + ch));
        const __m256i l = _mm256_unpacklo_epi8(xa, xb), h = _mm256_unpackhi_epi8(xa, xb);
        const int16_t* wq = wt->pairs + (q * c + ch) * 2;
        lo = _mm512_dpwssd_epi32(lo, _mm512_cvtepi8_epi16(_mm256_permute2x128_si256(l, h, 0x20)),
                                 _mm512_loadu_si512(wq));
        hi = _mm512_dpwssd_epi32(hi, _mm512_cvtepi8_epi16(_mm256_permute2x128_si256(l, h, 0x31)),
                                 _mm512_loadu_si512(wq + 32));
      }
      qs8_store_16(_mm512_sub_epi32(lo, _mm512_loadu_si512(wt->zp_sum + ch)), ch, bias, p->w_scale, &e, y);
      qs8_store_16(_mm512_sub_epi32(hi, _mm512_loadu_si512(wt->zp_sum + ch + 16)), ch + 16, bias, p->w_scale, &e, y);
    }
    if (ch + 16 <= c) {
      __m512i acc = _mm512_setzero_si512();
      for (size_t q = 0; q < 5; q++) {
        const __m128i xa = _mm_loadu_si128((const __m128i*)(taps[2 * q] + ch));
        const __m128i xb = _mm_loadu_si128((const __m128i*)(taps[q < 4 ? 2 * q + 1 : 8] + ch));
        const __m256i pairs = _mm256_setr_m128i(_mm_unpacklo_epi8(xa, xb), _mm_unpackhi_epi8(xa, xb));
        acc = _mm512_dpwssd_epi32(acc, _mm512_cvtepi8_epi16(pairs), _mm512_loadu_si512(wt->pairs + (q * c + ch) * 2));
      }
      qs8_store_16(_mm512_sub_epi32(acc, _mm512_loadu_si512(wt->zp_sum + ch)), ch, bias, p->w_scale, &e, y);
      ch += 16;
    }
    ef_dwconv_qs8_channels(ch, c, taps, wt->w, bias, y, p);
  }
}

const ef_conv_config ef_conv_config_avx512 = {
    .isa = "avx512",
    .dw3x3_f32 = ef_f32_dwconv_minmax_ukernel_9p16c__avx512f,
    .dw3x3_qs8 = ef_qs8_dwconv_minmax_ukernel_9p32c__avx512vnni,
};
#endif
