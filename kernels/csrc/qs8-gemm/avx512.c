/* AVX-512 helpers of the AMX qs8 path: dynamic quantization of fp32 rows straight into the
 * tile layout (uint8 a + 128, row stride kp64, with the row sums), in one pass instead of
 * quantize -> int8 buffer -> offset copy.
 *
 * The definition is ef_qd8_quantize_rows_asym's (qs8-gemm.h): q = clamp(nearbyint(x / s) + zp).
 * A vector division costs about as much as the whole GEMM for K = 384 at M = 128, so the
 * quotient is first taken as y = x * (1/s): with r = RN(1/s) and y = RN(x * r), y is within
 * 2 ulp of x/s, and |x/s| <= 255 * (1 + 2^-22) (|x| <= hi - lo = 255 s up to rounding), so
 * |y - x/s| < 2^-15 and |RN(x/s) - x/s| <= 2^-17. Rounding to an integer only jumps at
 * half-integers, so when y is farther than EF_QD8_TIE_MARGIN (2^-12, 4x the bound) from every
 * half-integer,
 * nearbyint(y) == nearbyint(RN(x/s)) exactly. A vector with any lane inside the margin (ties
 * included) or NaN is recomputed with the true division; rows whose scale is not a normal
 * finite float (s = inf, or 1/s overflows) use the division throughout. Bit-exact either way. */
#include "qs8-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>
#include <math.h>

#define EF_QD8_TIE_MARGIN (1.0f / 4096.0f)

EF_TARGET_AVX512 void ef_qd8_quantize_rows_u8__avx512(const float* x, size_t m, size_t k, size_t stride, uint8_t* a,
                                                      float* scale, int32_t* zp, int32_t* rowsum) {
  const size_t k16 = k & ~(size_t)15;
  const __mmask16 tail = (__mmask16)((1u << (k - k16)) - 1);
  for (size_t row = 0; row < m; row++) {
    const float* xr = x + row * k;
    /* min/max as the AVX2 version: min_ps(v, acc) keeps acc for NaN v; masked-off tail lanes
     * load 0, which cannot move a minimum <= 0 or a maximum >= 0. */
    __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps();
    size_t i0 = 0;
    if (k16 >= 64) { /* four independent chains: min/max latency, not throughput, limits one */
      __m512 lo1 = vlo, lo2 = vlo, lo3 = vlo, hi1 = vhi, hi2 = vhi, hi3 = vhi;
      for (; i0 + 64 <= k16; i0 += 64) {
        const __m512 v0 = _mm512_loadu_ps(xr + i0), v1 = _mm512_loadu_ps(xr + i0 + 16);
        const __m512 v2 = _mm512_loadu_ps(xr + i0 + 32), v3 = _mm512_loadu_ps(xr + i0 + 48);
        vlo = _mm512_min_ps(v0, vlo);
        lo1 = _mm512_min_ps(v1, lo1);
        lo2 = _mm512_min_ps(v2, lo2);
        lo3 = _mm512_min_ps(v3, lo3);
        vhi = _mm512_max_ps(v0, vhi);
        hi1 = _mm512_max_ps(v1, hi1);
        hi2 = _mm512_max_ps(v2, hi2);
        hi3 = _mm512_max_ps(v3, hi3);
      }
      /* none of these lanes is NaN, so the combining order is free */
      vlo = _mm512_min_ps(_mm512_min_ps(vlo, lo1), _mm512_min_ps(lo2, lo3));
      vhi = _mm512_max_ps(_mm512_max_ps(vhi, hi1), _mm512_max_ps(hi2, hi3));
    }
    for (size_t i = i0; i < k16; i += 16) {
      const __m512 v = _mm512_loadu_ps(xr + i);
      vlo = _mm512_min_ps(v, vlo);
      vhi = _mm512_max_ps(v, vhi);
    }
    if (tail) {
      const __m512 v = _mm512_maskz_loadu_ps(tail, xr + k16);
      vlo = _mm512_min_ps(v, vlo);
      vhi = _mm512_max_ps(v, vhi);
    }
    const float lo = _mm512_reduce_min_ps(vlo), hi = _mm512_reduce_max_ps(vhi);
    const float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    float z = nearbyintf(-128.0f - lo / s);
    z = z < -128.0f ? -128.0f : (z > 127.0f ? 127.0f : z);
    const float r = 1.0f / s;
    const int fast = r > 0.0f && r < INFINITY; /* s normal and finite */

    const __m512 vs = _mm512_set1_ps(s), vr = _mm512_set1_ps(r);
    const __m512 far = _mm512_set1_ps(0.5f - EF_QD8_TIE_MARGIN);
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    const __m512i vz = _mm512_set1_epi32((int32_t)z), qlo = _mm512_set1_epi32(-128), qhi = _mm512_set1_epi32(127);
    __m512i sum = _mm512_setzero_si512();
    uint8_t* dst = a + row * stride;
    size_t i = 0;
    if (fast) { /* 64 at a time: the packs saturate (clamp for free) and one SAD sums the row */
      const __m512i vz128 = _mm512_set1_epi32((int32_t)z + 128);
      const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
      __m512i usum = _mm512_setzero_si512(); /* 8 x u64 sums of the stored bytes (q + 128) */
      for (; i + 64 <= k; i += 64) {
        const __m512 v0 = _mm512_loadu_ps(xr + i), v1 = _mm512_loadu_ps(xr + i + 16);
        const __m512 v2 = _mm512_loadu_ps(xr + i + 32), v3 = _mm512_loadu_ps(xr + i + 48);
        __m512 y0 = _mm512_mul_ps(v0, vr), y1 = _mm512_mul_ps(v1, vr), y2 = _mm512_mul_ps(v2, vr), y3 = _mm512_mul_ps(v3, vr);
        /* y - nearbyint(y) (vreduceps, exact), largest magnitude of the four (vrangeps) */
        const int red = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        const __m512 f01 = _mm512_range_ps(_mm512_reduce_ps(y0, red), _mm512_reduce_ps(y1, red), 0x0B);
        const __m512 f23 = _mm512_range_ps(_mm512_reduce_ps(y2, red), _mm512_reduce_ps(y3, red), 0x0B);
        if (_mm512_cmp_ps_mask(_mm512_range_ps(f01, f23, 0x0B), far, _CMP_LT_OQ) != 0xFFFF) {
          y0 = _mm512_div_ps(v0, vs); /* some lane near a tie: the true quotients */
          y1 = _mm512_div_ps(v1, vs);
          y2 = _mm512_div_ps(v2, vs);
          y3 = _mm512_div_ps(v3, vs);
        }
        /* q + zp + 128 in int32 (NaN -> INT_MIN + ..., saturating to 0 = q of -128), then
         * int32 -> int16 -> uint8 with saturation = the clamp to [-128, 127] (+ 128) */
        const __m512i u0 = _mm512_add_epi32(_mm512_cvtps_epi32(y0), vz128), u1 = _mm512_add_epi32(_mm512_cvtps_epi32(y1), vz128);
        const __m512i u2 = _mm512_add_epi32(_mm512_cvtps_epi32(y2), vz128), u3 = _mm512_add_epi32(_mm512_cvtps_epi32(y3), vz128);
        const __m512i u8 = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(_mm512_packs_epi32(u0, u1), _mm512_packs_epi32(u2, u3)));
        usum = _mm512_add_epi64(usum, _mm512_sad_epu8(u8, _mm512_setzero_si512()));
        _mm512_storeu_si512(dst + i, u8);
      }
      sum = _mm512_mask_mov_epi32(sum, 1, _mm512_set1_epi32((int32_t)((uint32_t)_mm512_reduce_add_epi64(usum) - 128u * (uint32_t)i)));
    }
    for (; i < k; i += 16) {
      const __mmask16 lanes = i + 16 <= k ? (__mmask16)0xFFFF : tail;
      const __m512 v = _mm512_maskz_loadu_ps(lanes, xr + i);
      /* cvtps rounds to nearest even (default MXCSR), as nearbyintf; |quotient| <= 256, and
       * NaN becomes INT_MIN, which the clamp below sends to -128 like the scalar compares. */
      __m512i qi;
      if (fast) {
        const __m512 y = _mm512_mul_ps(v, vr);
        qi = _mm512_cvtps_epi32(y);
        const __m512 frac = _mm512_and_ps(_mm512_sub_ps(y, _mm512_cvtepi32_ps(qi)), abs_mask);
        /* ordered compare: NaN lanes count as near a tie */
        if (_mm512_cmp_ps_mask(frac, far, _CMP_LT_OQ) != 0xFFFF) qi = _mm512_cvtps_epi32(_mm512_div_ps(v, vs));
      } else {
        qi = _mm512_cvtps_epi32(_mm512_div_ps(v, vs));
      }
      /* + zp and the clamp in int32: the same values as the float sequence (all small integers) */
      qi = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(qi, vz), qlo), qhi);
      sum = _mm512_mask_add_epi32(sum, lanes, sum, qi);
      _mm_mask_storeu_epi8(dst + i, lanes, _mm512_cvtepi32_epi8(_mm512_add_epi32(qi, _mm512_set1_epi32(128))));
    }
    memset(dst + k, 128, stride - k); /* K padding: a = 0 */
    scale[row] = s;
    zp[row] = (int32_t)z;
    rowsum[row] = _mm512_reduce_add_epi32(sum);
  }
}
#endif /* EF_ARCH_X86 */

#if EF_ARCH_X86
/* int8 rows -> the same tile layout: a + 128 (a flip of the sign bit) with K padded by 128, and
 * the row sums of a, from the byte sums of a + 128 (vpsadbw) minus 128 * K. */
EF_TARGET_AVX512 void ef_qs8_prepare_rows_u8__avx512(const int8_t* a, size_t m, size_t k, size_t stride, uint8_t* dst,
                                                     int32_t* rowsum) {
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  for (size_t row = 0; row < m; row++) {
    const int8_t* src = a + row * k;
    uint8_t* d = dst + row * stride;
    __m512i usum = _mm512_setzero_si512();
    for (size_t i = 0; i < k; i += 64) {
      const __mmask64 lanes = i + 64 <= k ? ~(__mmask64)0 : (((__mmask64)1 << (k - i)) - 1);
      /* masked-off lanes load 0 and become 128: exactly the padding value, counted below */
      const __m512i u = _mm512_xor_si512(_mm512_maskz_loadu_epi8(lanes, src + i), flip);
      usum = _mm512_add_epi64(usum, _mm512_sad_epu8(u, _mm512_setzero_si512()));
      _mm512_mask_storeu_epi8(d + i, lanes, u);
    }
    memset(d + k, 128, stride - k);
    rowsum[row] = (int32_t)((uint32_t)_mm512_reduce_add_epi64(usum) - 128u * (uint32_t)EF_ROUND_UP(k, 64));
  }
}
#endif /* EF_ARCH_X86 */

#if EF_ARCH_X86
#include "dot-avx512.h"
#include "qs8-gemm/avx512-epilogue.h"

/* AVX-512 VNNI GEMV on the x4 panel: one 64-byte panel row is 16 columns x 4 K values,
 * exactly one 512-bit vpdpbusd operand, so each 4 K values of the activation row (broadcast)
 * cost one instruction per 16 columns, with no shuffles (the 256-bit AVX-VNNI kernel
 * interleaves c2 pairs first). Four accumulators over interleaved K steps hide vpdpbusd's
 * latency; their int32 sum is exact (wrapping, as everywhere). */
EF_INLINE EF_TARGET_AVX512 __m512i panel_dot_1row(const uint8_t* a, const uint8_t* wp, size_t k16) {
  __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  for (size_t kk = 0; kk < k16; kk += 16) {
    const uint8_t* wk = wp + kk * EF_QS8_NR;
    ef_dpbusd_512(&acc0, _mm512_set1_epi32(ef_load_i32(a + kk)), _mm512_load_si512(wk));
    ef_dpbusd_512(&acc1, _mm512_set1_epi32(ef_load_i32(a + kk + 4)), _mm512_load_si512(wk + 64));
    ef_dpbusd_512(&acc2, _mm512_set1_epi32(ef_load_i32(a + kk + 8)), _mm512_load_si512(wk + 128));
    ef_dpbusd_512(&acc3, _mm512_set1_epi32(ef_load_i32(a + kk + 12)), _mm512_load_si512(wk + 192));
  }
  return _mm512_add_epi32(_mm512_add_epi32(acc0, acc1), _mm512_add_epi32(acc2, acc3));
}

/* Four rows of two adjacent panels at once (M > 1 on CPUs with AVX-512 VNNI but no AMX: Ice
 * Lake, Zen 4, Zen 5): a 4 x 32 output tile. Each broadcast of 4 activation bytes feeds two
 * vpdpbusd (one per panel) and each panel load four, 12 loads per 16 vpdpbusd: Zen 5 runs
 * two 512-bit loads and two vpdpbusd per cycle, so the 4 x 16 tile before (10 loads per 8)
 * was bound by its loads at ~0.7 of vpdpbusd's rate. Two K steps in flight give sixteen
 * independent accumulators (vpdpbusd's latency is ~4 cycles). Rows past M are the panel
 * path's padding (a = 0). wp1 = NULL: one panel (the last of an odd range). */
EF_INLINE EF_TARGET_AVX512 void panel_dot_4rows(const uint8_t* a, size_t a_stride, const uint8_t* wp0,
                                                const uint8_t* wp1, size_t k16, __m512i out0[4], __m512i out1[4]) {
  const __m512i z = _mm512_setzero_si512();
  __m512i l0 = z, l1 = z, l2 = z, l3 = z, h0 = z, h1 = z, h2 = z, h3 = z; /* panel 0, K steps 0 / 1 */
  __m512i m0 = z, m1 = z, m2 = z, m3 = z, n0 = z, n1 = z, n2 = z, n3 = z; /* panel 1 */
  const uint8_t* a1 = a + a_stride;
  const uint8_t* a2 = a + 2 * a_stride;
  const uint8_t* a3 = a + 3 * a_stride;
#define PANEL_ROW(ar, l, h, m, n)                                      \
  {                                                                    \
    const __m512i b0 = _mm512_set1_epi32(ef_load_i32(ar + kk));        \
    const __m512i b1 = _mm512_set1_epi32(ef_load_i32(ar + kk + 4));    \
    ef_dpbusd_512(&l, b0, w00);                                        \
    ef_dpbusd_512(&h, b1, w01);                                        \
    if (wp1 != NULL) {                                                 \
      ef_dpbusd_512(&m, b0, w10);                                      \
      ef_dpbusd_512(&n, b1, w11);                                      \
    }                                                                  \
  }
  for (size_t kk = 0; kk < k16; kk += 8) {
    const __m512i w00 = _mm512_load_si512(wp0 + kk * EF_QS8_NR);
    const __m512i w01 = _mm512_load_si512(wp0 + kk * EF_QS8_NR + 64);
    __m512i w10 = z, w11 = z;
    if (wp1 != NULL) {
      w10 = _mm512_load_si512(wp1 + kk * EF_QS8_NR);
      w11 = _mm512_load_si512(wp1 + kk * EF_QS8_NR + 64);
    }
    PANEL_ROW(a, l0, h0, m0, n0)
    PANEL_ROW(a1, l1, h1, m1, n1)
    PANEL_ROW(a2, l2, h2, m2, n2)
    PANEL_ROW(a3, l3, h3, m3, n3)
  }
#undef PANEL_ROW
  out0[0] = _mm512_add_epi32(l0, h0), out0[1] = _mm512_add_epi32(l1, h1);
  out0[2] = _mm512_add_epi32(l2, h2), out0[3] = _mm512_add_epi32(l3, h3);
  out1[0] = _mm512_add_epi32(m0, n0), out1[1] = _mm512_add_epi32(m1, n1);
  out1[2] = _mm512_add_epi32(m2, n2), out1[3] = _mm512_add_epi32(m3, n3);
}

/* The epilogue of one 16-column block for the rows of raw. */
EF_INLINE EF_TARGET_AVX512 void panel_block_out(const ef_qs8_panel_args* g, size_t b, size_t row0, size_t rows,
                                                const __m512i* raw, int shared, size_t elem) {
  const ef_qs8_packed* w = g->w;
  const ef_qs8_gemm_params* p = g->params;
  const size_t n0 = b * EF_QS8_NR;
  const __mmask16 mask = (__mmask16)((1u << EF_MIN(EF_QS8_NR, w->n - n0)) - 1);
  const ef_qs8_cols16 cols = ef_qs8_load_cols16__avx512(w->data + b * w->block_bytes, w->has_w_zp, p);
  if (shared) { /* per-tensor activations (the CNN plans): one offset and scale product for the tile's rows
                 (set up per tile, not hoisted per block: holding two blocks' constants across the row loop
                 spilled registers and measured slower) */
    const __m512i offset = ef_qs8_offset_16__avx512(g->a_zp[0], &cols);
    const __m512 s = _mm512_mul_ps(_mm512_set1_ps(g->a_scale[0]), cols.w_scale);
    for (size_t r = 0; r < rows; r++)
      ef_qs8_finish_16__avx512(_mm512_sub_epi32(raw[r], offset), s, mask, &cols,
                               (uint8_t*)g->c + ((row0 + r) * w->n + n0) * elem);
  } else {
    for (size_t r = 0; r < rows; r++) {
      const size_t row = row0 + r;
      ef_qs8_store_16__avx512(raw[r], mask, g->a_zp[row], g->a_scale[row], g->a_rowsum[row], &cols,
                              (uint8_t*)g->c + (row * w->n + n0) * elem);
    }
  }
}

static EF_TARGET_AVX512 void ef_qs8_qc8w_gemm_minmax_ukernel_4x32c4__avx512(const ef_qs8_panel_args* g, size_t b_begin,
                                                                            size_t b_end) {
  const ef_qs8_packed* w = g->w;
  const size_t elem = g->params->out_int8 ? 1 : sizeof(float);
  const size_t k16 = EF_ROUND_UP(w->k, 16); /* <= kp64; zero weights and a = 128 past K */
  const size_t panel_bytes = w->kp64 * EF_QS8_NR;
  /* per-tensor activations: every row the same scale and zero point */
  const int shared = !w->has_w_zp && ef_qs8_rows_share_params(g->a_zp, g->a_scale, 0, g->m);
  for (size_t b = b_begin; b < b_end; b += 2) {
    const int pair = b + 1 < b_end;
    const uint8_t* wp0 = w->panel + b * panel_bytes;
    const uint8_t* wp1 = pair ? wp0 + panel_bytes : NULL;
    for (size_t row0 = 0; row0 < g->m; row0 += 4) {
      __m512i raw0[4], raw1[4];
      const size_t rows = EF_MIN(4, g->m - row0);
      const uint8_t* a = g->a + row0 * g->a_stride;
      if (rows == 1) { /* the GEMV: one row, four K steps in flight per panel */
        raw0[0] = panel_dot_1row(a, wp0, k16);
        if (pair) raw1[0] = panel_dot_1row(a, wp1, k16);
      } else if (pair) { /* wp1 spelled out: the inlined copy then drops the NULL checks */
        panel_dot_4rows(a, g->a_stride, wp0, wp0 + panel_bytes, k16, raw0, raw1);
      } else {
        panel_dot_4rows(a, g->a_stride, wp0, NULL, k16, raw0, raw1);
      }
      panel_block_out(g, b, row0, rows, raw0, shared, elem);
      if (pair) panel_block_out(g, b + 1, row0, rows, raw1, shared, elem);
    }
  }
}

const ef_qs8_gemm_config ef_qs8_gemm_config_avx512 = {
    .isa = "avx512",
    .arch_flags = EF_ARCH_X86_AVX2 | EF_ARCH_X86_AVX512,
    .mr = 4,
    .a_u8 = 1,
    .panel = ef_qs8_qc8w_gemm_minmax_ukernel_4x32c4__avx512,
    .panel_min_m = 1,
    .panel_max_m = 0,
    .panel_row_pad = 4,
    .panel_blocks = 4,
    .panel_speedup = 4,
    /* Only for weights packed without the panel, which a CPU with AVX-512 never does; AVX2,
     * not AVX-VNNI: AVX-512 VNNI CPUs such as Zen 4 and Ice Lake lack the VEX encoding. */
    .fallback = &ef_qs8_gemm_config_avx2,
};
#endif /* EF_ARCH_X86 */
