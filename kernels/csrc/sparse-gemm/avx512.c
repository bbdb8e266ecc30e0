/* AVX-512 sparse-gemm kernel for the bitmask layout (sparse-gemm.h): per 64-column chunk
 * and row, one 64-byte load at the row-chunk's value offset, vpexpandb with the mask (the
 * nonzeros land in their columns, zeros elsewhere) and one vpdpbusd with x + 128 (uint8).
 * vpdpbusd sums u8 x s8 products into int32 without saturation, so the sum is exact; the
 * +128 offset is removed at the end as 128 * wsum. The expanded weights of a chunk serve up
 * to EF_SPB_MR activation rows. Cost per 64 weights: one expand (port 5) + one vpdpbusd per
 * activation row, whatever the density; the bytes read shrink with it. */
#include "sparse-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#define SPB_TARGET_AVX512 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vbmi2,popcnt")))

/* [sum a0, sum a1, sum a2, sum a3] */
EF_INLINE SPB_TARGET_AVX512 __m128i hsum4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
  const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
  const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
  const __m256i t = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

EF_INLINE SPB_TARGET_AVX512 void spb_groups(const size_t MR, const ef_spb_packed* w, size_t g0, size_t g1,
                                            const uint8_t* x, size_t ldx, int32_t* raw, size_t ldr) {
  const size_t chunks = w->chunks;
  for (size_t g = g0; g < g1; g++) {
    __m512i acc[EF_SPB_MR][EF_SPB_ROWS];
#pragma GCC unroll 4
    for (size_t r = 0; r < MR; r++) {
      acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_si512();
    }
    const uint64_t* mask = w->mask + g * chunks * EF_SPB_ROWS;
    const int8_t* v = w->val + w->group_val[g];
    for (size_t c = 0; c < chunks; c++, mask += EF_SPB_ROWS) {
      const uint64_t m0 = mask[0], m1 = mask[1], m2 = mask[2], m3 = mask[3];
      /* offsets from popcounts: off the pointer's dependency chain except for one add */
      const size_t o1 = (size_t)_mm_popcnt_u64(m0);
      const size_t o2 = o1 + (size_t)_mm_popcnt_u64(m1);
      const size_t o3 = o2 + (size_t)_mm_popcnt_u64(m2);
      const size_t o4 = o3 + (size_t)_mm_popcnt_u64(m3);
      const __m512i w0 = _mm512_maskz_expand_epi8(m0, _mm512_loadu_si512(v));
      const __m512i w1 = _mm512_maskz_expand_epi8(m1, _mm512_loadu_si512(v + o1));
      const __m512i w2 = _mm512_maskz_expand_epi8(m2, _mm512_loadu_si512(v + o2));
      const __m512i w3 = _mm512_maskz_expand_epi8(m3, _mm512_loadu_si512(v + o3));
      v += o4;
#pragma GCC unroll 4
      for (size_t r = 0; r < MR; r++) {
        const __m512i xv = _mm512_loadu_si512(x + r * ldx + c * EF_SPB_CHUNK);
        acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], xv, w0);
        acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], xv, w1);
        acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], xv, w2);
        acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], xv, w3);
      }
    }
    const __m128i corr = _mm_slli_epi32(_mm_loadu_si128((const __m128i*)(w->wsum + g * EF_SPB_ROWS)), 7);
#pragma GCC unroll 4
    for (size_t r = 0; r < MR; r++)
      _mm_storeu_si128((__m128i*)(raw + r * ldr + g * EF_SPB_ROWS),
                       _mm_sub_epi32(hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]), corr));
  }
}

/* The GEMV case written out with named accumulators: the array version above leaves GCC
 * copying the four accumulators around every iteration. */
static SPB_TARGET_AVX512 void spb_groups_mr1(const ef_spb_packed* w, size_t g0, size_t g1, const uint8_t* x,
                                            int32_t* raw) {
  const size_t chunks = w->chunks;
  for (size_t g = g0; g < g1; g++) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    const uint64_t* mask = w->mask + g * chunks * EF_SPB_ROWS;
    const int8_t* v = w->val + w->group_val[g];
    const uint8_t* xc = x;
    for (size_t c = 0; c < chunks; c++, mask += EF_SPB_ROWS, xc += EF_SPB_CHUNK) {
      const uint64_t m0 = mask[0], m1 = mask[1], m2 = mask[2], m3 = mask[3];
      const size_t o1 = (size_t)_mm_popcnt_u64(m0);
      const size_t o2 = o1 + (size_t)_mm_popcnt_u64(m1);
      const size_t o3 = o2 + (size_t)_mm_popcnt_u64(m2);
      const size_t o4 = o3 + (size_t)_mm_popcnt_u64(m3);
      const __m512i xv = _mm512_loadu_si512(xc);
      a0 = _mm512_dpbusd_epi32(a0, xv, _mm512_maskz_expand_epi8(m0, _mm512_loadu_si512(v)));
      a1 = _mm512_dpbusd_epi32(a1, xv, _mm512_maskz_expand_epi8(m1, _mm512_loadu_si512(v + o1)));
      a2 = _mm512_dpbusd_epi32(a2, xv, _mm512_maskz_expand_epi8(m2, _mm512_loadu_si512(v + o2)));
      a3 = _mm512_dpbusd_epi32(a3, xv, _mm512_maskz_expand_epi8(m3, _mm512_loadu_si512(v + o3)));
      v += o4;
    }
    const __m128i corr = _mm_slli_epi32(_mm_loadu_si128((const __m128i*)(w->wsum + g * EF_SPB_ROWS)), 7);
    _mm_storeu_si128((__m128i*)(raw + g * EF_SPB_ROWS), _mm_sub_epi32(hsum4(a0, a1, a2, a3), corr));
  }
}

static SPB_TARGET_AVX512 void ef_qs8_spmv_bitmask_ukernel_4x64__avx512(const ef_spb_packed* w, size_t g0, size_t g1,
                                                                       size_t mr, const void* x, size_t ldx,
                                                                       int32_t* raw, size_t ldr) {
  switch (mr) {
    case 1: spb_groups_mr1(w, g0, g1, x, raw); break;
    case 2: spb_groups(2, w, g0, g1, x, ldx, raw, ldr); break;
    case 3: spb_groups(3, w, g0, g1, x, ldx, raw, ldr); break;
    default: spb_groups(4, w, g0, g1, x, ldx, raw, ldr); break;
  }
}

const ef_spb_config ef_spb_config_avx512 = {
    .isa = "avx512",
    .x_format = EF_SPB_X_U8,
    .ukernel = ef_qs8_spmv_bitmask_ukernel_4x64__avx512,
};
#endif /* EF_ARCH_X86 */
