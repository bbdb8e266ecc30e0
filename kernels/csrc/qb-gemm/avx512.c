/* AVX-512 qb-gemm kernels (F + BW + VNNI) on the 16-column panel layout (EF_QB_LAYOUT_P16,
 * qb-gemm.h), which ef_qb_pack picks while this config is selected.
 *
 * One 64-byte load is 16 columns x 4 consecutive k per bit field. 4 bits: the low nibbles
 * (v & 0x0F) and the high nibbles left in place (v & 0xF0 = 16 q) go to vpdpbusd against 4
 * activation bytes broadcast to every lane (an embedded {1to16} memory operand), each into
 * its own int32 accumulator; the high one stays exact (a group of 128 sums at most
 * 64 * 16 * 15 * 127 < 2^31) and is divided back by 16 with one arithmetic shift per group. 2 bits: four masked fields, the
 * odd ones shifted down. Per group, the int32 lanes (one per column) are converted once and
 * scaled by the 16 fp16 scales (one vcvtph2ps) in one FMA with the offsets times the
 * activation group sum (that term rounded once, then added to the running sum). Several panels (M = 1) or rows (M > 1) per call keep
 * 4-8 independent vpdpbusd chains in flight; the matrix streams front to back.
 *
 * Rows-layout weights (packed under another ISA) run on the AVX2 kernels (.fallback): not
 * AVX-VNNI, whose VEX encoding AVX-512 VNNI CPUs such as Zen 4 and Ice Lake lack.
 * ef_qd8_quantize_row__avx512 is the portable quantizer vectorized with the same IEEE
 * operations (max |x|, one division, multiply, clamp with NaN -> -127, round half to even),
 * so it gives the same bytes (tested against it in the C harness). */
#include <string.h>

#include "qb-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#define T EF_TARGET_AVX512

T float ef_qd8_quantize_row__avx512(const float* x, size_t k, size_t kp, size_t group, int8_t* xq, float* xsum) {
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
  __m512 vmax = _mm512_setzero_ps();
  size_t i = 0;
  /* max(|x|, vmax) returns vmax for a NaN |x|: NaN is ignored, like fmaxf */
  for (; i + 16 <= k; i += 16) vmax = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(x + i), absmask), vmax);
  if (i < k) {
    const __mmask16 tail = (__mmask16)((1u << (k - i)) - 1);
    vmax = _mm512_max_ps(_mm512_and_ps(_mm512_maskz_loadu_ps(tail, x + i), absmask), vmax);
  }
  const float amax = _mm512_reduce_max_ps(vmax);
  const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
  const float inv = 1.0f / scale;
  const __m512 vinv = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (i = 0; i < k; i += 16) {
    const __mmask16 m = k - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k - i)) - 1);
    __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vinv);
    t = _mm512_max_ps(t, lo); /* NaN t -> -127 (the second operand), as in the portable code */
    t = _mm512_min_ps(t, hi);
    _mm_mask_storeu_epi8(xq + i, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(t))); /* MXCSR: half to even */
  }
  memset(xq + k, 0, kp - k);
  const __m256i ones = _mm256_set1_epi8(1);
  for (size_t g = 0; g < kp / group; g++) {
    __m256i s = _mm256_setzero_si256();
    for (size_t o = 0; o < group; o += 32) s = _mm256_dpbusd_epi32(s, ones, _mm256_loadu_si256((const __m256i*)(xq + g * group + o)));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    xsum[g] = (float)_mm_cvtsi128_si32(s4);
  }
  return scale;
}

EF_INLINE T __m512i bcast4(const int8_t* p) {
  int32_t v;
  memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

/* MR rows x NP panels (16 * NP columns), all groups. `group` is a constant at every call
 * (tile_by_group), so the steps of a group unroll fully and the int32 accumulators live
 * only inside one group (with a runtime trip count GCC shuffles them between registers on
 * every step). */
EF_INLINE T void p16_tile(const int BITS, const size_t MR, const size_t NP, size_t nc, size_t groups, const size_t group,
                          const int8_t* xq, size_t x_stride, const float* xsum, const float* sx, const uint8_t* panels,
                          size_t panel_bytes, const float* bias, float* c, size_t c_stride) {
  const size_t gbytes = EF_QB_P16_GROUP_BYTES(BITS, group);
  const size_t steps = group * BITS / 32; /* 64-byte loads per group and panel */
  const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x03);
  __m512 acc[4][4];
  for (size_t r = 0; r < MR; r++)
    for (size_t p = 0; p < NP; p++) acc[r][p] = _mm512_setzero_ps();

  for (size_t g = 0; g < groups; g++) {
    const int8_t* xg = xq + g * group;
    const uint8_t* rec = panels + g * gbytes;
    __m512i i0[4][4], i1[4][4];
    for (size_t r = 0; r < MR; r++)
      for (size_t p = 0; p < NP; p++) { i0[r][p] = _mm512_setzero_si512(); i1[r][p] = _mm512_setzero_si512(); }
#pragma GCC unroll 16
    for (size_t s = 0; s < steps; s++) {
      for (size_t p = 0; p < NP; p++) {
        const __m512i v = _mm512_load_si512((const void*)(rec + p * panel_bytes + 64 + 64 * s));
        if (BITS == 4) {
          const __m512i q_lo = _mm512_and_si512(v, m4), q_hi16 = _mm512_andnot_si512(m4, v);
          for (size_t r = 0; r < MR; r++) {
            i0[r][p] = _mm512_dpbusd_epi32(i0[r][p], q_lo, bcast4(xg + r * x_stride + 8 * s));
            i1[r][p] = _mm512_dpbusd_epi32(i1[r][p], q_hi16, bcast4(xg + r * x_stride + 8 * s + 4));
          }
        } else {
          const __m512i q0 = _mm512_and_si512(v, m2), q1 = _mm512_and_si512(_mm512_srli_epi16(v, 2), m2);
          const __m512i q2 = _mm512_and_si512(_mm512_srli_epi16(v, 4), m2), q3 = _mm512_and_si512(_mm512_srli_epi16(v, 6), m2);
          for (size_t r = 0; r < MR; r++) {
            const int8_t* xr = xg + r * x_stride + 16 * s;
            i0[r][p] = _mm512_dpbusd_epi32(i0[r][p], q0, bcast4(xr));
            i1[r][p] = _mm512_dpbusd_epi32(i1[r][p], q1, bcast4(xr + 4));
            i0[r][p] = _mm512_dpbusd_epi32(i0[r][p], q2, bcast4(xr + 8));
            i1[r][p] = _mm512_dpbusd_epi32(i1[r][p], q3, bcast4(xr + 12));
          }
        }
      }
    }
    for (size_t p = 0; p < NP; p++) {
      const uint8_t* hdr = rec + p * panel_bytes;
      const __m512 d = _mm512_cvtph_ps(_mm256_load_si256((const __m256i*)hdr));
      const __m512 mm = _mm512_cvtph_ps(_mm256_load_si256((const __m256i*)(hdr + 32)));
      for (size_t r = 0; r < MR; r++) {
        const __m512i isum = BITS == 4 ? _mm512_add_epi32(i0[r][p], _mm512_srai_epi32(i1[r][p], 4))
                                       : _mm512_add_epi32(i0[r][p], i1[r][p]);
        /* m * xsum is exact (fp16 m: 11 bits, |xsum| < 2^13 for groups up to 64), so the
         * group's term d * isum + m * xsum, which often cancels, is rounded once */
        const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, _mm512_mul_ps(mm, _mm512_set1_ps(xsum[r * groups + g])));
        acc[r][p] = _mm512_add_ps(acc[r][p], t);
      }
    }
  }
  for (size_t p = 0; p < NP; p++) {
    const size_t valid = nc - p * EF_QB_PANEL;
    const __mmask16 mask = valid >= EF_QB_PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << valid) - 1);
    const __m512 b = _mm512_maskz_loadu_ps(mask, bias + p * EF_QB_PANEL);
    for (size_t r = 0; r < MR; r++) {
      const __m512 y = _mm512_add_ps(_mm512_mul_ps(acc[r][p], _mm512_set1_ps(sx[r])), b);
      _mm512_mask_storeu_ps(c + r * c_stride + p * EF_QB_PANEL, mask, y);
    }
  }
}

EF_INLINE T void tile_by_group(const int BITS, const size_t MR, const size_t NP, size_t nc, size_t groups, size_t group,
                               const int8_t* xq, size_t x_stride, const float* xsum, const float* sx,
                               const uint8_t* panels, size_t panel_bytes, const float* bias, float* c, size_t c_stride) {
  if (group == 32)
    p16_tile(BITS, MR, NP, nc, groups, 32, xq, x_stride, xsum, sx, panels, panel_bytes, bias, c, c_stride);
  else if (group == 64)
    p16_tile(BITS, MR, NP, nc, groups, 64, xq, x_stride, xsum, sx, panels, panel_bytes, bias, c, c_stride);
  else
    p16_tile(BITS, MR, NP, nc, groups, 128, xq, x_stride, xsum, sx, panels, panel_bytes, bias, c, c_stride);
}

/* A full call is one MR x NP tile; a shorter one (the end of a thread's range) goes by 2 and
 * 1 panels. */
#define DEFINE_KERNEL(BITS, MR, NP, NR)                                                                              \
  static T void ef_qd8_f32_qb##BITS##w_gemm_p16_ukernel_##MR##x##NR##c4__avx512(                                    \
      size_t mr, size_t np, size_t nc, size_t groups, size_t group, const int8_t* xq, size_t x_stride,              \
      const float* xsum, const float* sx, const uint8_t* panels, size_t panel_bytes, const float* bias, float* c,   \
      size_t c_stride) {                                                                                             \
    size_t p = 0;                                                                                                    \
    if (np == NP) {                                                                                                  \
      tile_by_group(BITS, MR, NP, nc, groups, group, xq, x_stride, xsum, sx, panels, panel_bytes, bias, c, c_stride); \
      return;                                                                                                        \
    }                                                                                                                \
    if (NP > 2)                                                                                                      \
      for (; p + 2 <= np; p += 2)                                                                                    \
        tile_by_group(BITS, MR, 2, nc - p * EF_QB_PANEL, groups, group, xq, x_stride, xsum, sx,                      \
                      panels + p * panel_bytes, panel_bytes, bias + p * EF_QB_PANEL, c + p * EF_QB_PANEL, c_stride); \
    for (; p < np; p++)                                                                                              \
      tile_by_group(BITS, MR, 1, nc - p * EF_QB_PANEL, groups, group, xq, x_stride, xsum, sx,                        \
                    panels + p * panel_bytes, panel_bytes, bias + p * EF_QB_PANEL, c + p * EF_QB_PANEL, c_stride);   \
  }
DEFINE_KERNEL(4, 1, 4, 64)
DEFINE_KERNEL(4, 2, 2, 32)
DEFINE_KERNEL(4, 3, 1, 16)
DEFINE_KERNEL(4, 4, 1, 16)
DEFINE_KERNEL(2, 1, 4, 64)
DEFINE_KERNEL(2, 2, 2, 32)
DEFINE_KERNEL(2, 3, 1, 16)
DEFINE_KERNEL(2, 4, 1, 16)

const ef_qb_gemm_config ef_qb_gemm_config_avx512 = {
    .isa = "avx512",
    .layout = EF_QB_LAYOUT_P16,
    .mr = 4,
    .np = {4, 2, 1, 1},
    .p16_q4 = {ef_qd8_f32_qb4w_gemm_p16_ukernel_1x64c4__avx512, ef_qd8_f32_qb4w_gemm_p16_ukernel_2x32c4__avx512,
               ef_qd8_f32_qb4w_gemm_p16_ukernel_3x16c4__avx512, ef_qd8_f32_qb4w_gemm_p16_ukernel_4x16c4__avx512},
    .p16_q2 = {ef_qd8_f32_qb2w_gemm_p16_ukernel_1x64c4__avx512, ef_qd8_f32_qb2w_gemm_p16_ukernel_2x32c4__avx512,
               ef_qd8_f32_qb2w_gemm_p16_ukernel_3x16c4__avx512, ef_qd8_f32_qb2w_gemm_p16_ukernel_4x16c4__avx512},
    .quantize = ef_qd8_quantize_row__avx512,
    .fallback = &ef_qb_gemm_config_avx2,
};
#endif /* EF_ARCH_X86 */
