/* AVX-512 sparse-gemm kernel for the bitmask layout (sparse-gemm.h): per 64-column chunk
 * and row, one 64-byte load at the row-chunk's value offset, vpexpandb with the mask (the
 * nonzeros land in their columns, zeros elsewhere) and one vpdpbusd with x + 128 (uint8).
 * vpdpbusd sums u8 x s8 products into int32 without saturation, so the sum is exact; the
 * +128 offset is removed at the end as 128 * wsum. The expanded weights of a chunk serve up
 * to EF_SPB_MR activation rows. Cost per 64 weights: one expand (port 5) + one vpdpbusd per
 * activation row, whatever the density; the bytes read shrink with it. */
#include "sparse-gemm.h"
#include "dot-avx512.h"

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

/* MR activation rows (1..4, a constant after inlining) against the 4 rows of each group.
 * Named accumulators rather than an array: with acc[MR][4] GCC copied or spilled them every
 * iteration. */
#define SPB_ROW(r)                                                                        \
  if (MR > r) {                                                                           \
    const __m512i xv = _mm512_loadu_si512(x + r * ldx + c * EF_SPB_CHUNK);                \
    ef_dpbusd_512(&a##r##0, xv, w0);                                                     \
    ef_dpbusd_512(&a##r##1, xv, w1);                                                     \
    ef_dpbusd_512(&a##r##2, xv, w2);                                                     \
    ef_dpbusd_512(&a##r##3, xv, w3);                                                     \
  }
#define SPB_OUT(r)                                                                         \
  if (MR > r)                                                                              \
    _mm_storeu_si128((__m128i*)(raw + r * ldr + g * EF_SPB_ROWS),                          \
                     _mm_sub_epi32(hsum4(a##r##0, a##r##1, a##r##2, a##r##3), corr));

EF_INLINE SPB_TARGET_AVX512 void spb_groups(const size_t MR, const ef_spb_packed* w, size_t g0, size_t g1,
                                            const uint8_t* x, size_t ldx, int32_t* raw, size_t ldr) {
  const size_t chunks = w->chunks;
  for (size_t g = g0; g < g1; g++) {
    const __m512i z = _mm512_setzero_si512();
    __m512i a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
    __m512i a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;
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
      SPB_ROW(0)
      SPB_ROW(1)
      SPB_ROW(2)
      SPB_ROW(3)
    }
    const __m128i corr = _mm_slli_epi32(_mm_loadu_si128((const __m128i*)(w->wsum + g * EF_SPB_ROWS)), 7);
    SPB_OUT(0)
    SPB_OUT(1)
    SPB_OUT(2)
    SPB_OUT(3)
  }
}

static SPB_TARGET_AVX512 void ef_qs8_spmv_bitmask_ukernel_4x64__avx512(const ef_spb_packed* w, size_t g0, size_t g1,
                                                                       size_t mr, const void* x, size_t ldx,
                                                                       int32_t* raw, size_t ldr) {
  switch (mr) {
    case 1: spb_groups(1, w, g0, g1, x, ldx, raw, ldr); break;
    case 2: spb_groups(2, w, g0, g1, x, ldx, raw, ldr); break;
    case 3: spb_groups(3, w, g0, g1, x, ldx, raw, ldr); break;
    default: spb_groups(4, w, g0, g1, x, ldx, raw, ldr); break;
  }
}

const ef_spb_config ef_spb_config_avx512 = {
    .isa = "avx512",
    .x_format = EF_SPB_X_U8,
    .ukernel = ef_qs8_spmv_bitmask_ukernel_4x64__avx512,
    .out_row = ef_sparse_qs8_out_row__avx512,
};

/* The shared epilogue's loop, vectorized by the compiler for AVX-512 (same operations per
 * output: bit-exact with the generic copy; -ffp-contract=off keeps the multiply and the add
 * apart). */
EF_TARGET_AVX512 void ef_sparse_qs8_out_row__avx512(const int32_t* restrict raw, const int32_t* restrict wsum,
                                                    const float* restrict w_scale, const float* restrict bias,
                                                    int32_t x_zp, float x_scale, float lo, float hi, size_t n0,
                                                    size_t n1, float* restrict y) {
  ef_sparse_qs8_out_row(raw, wsum, w_scale, bias, x_zp, x_scale, lo, hi, n0, n1, y);
}
#endif /* EF_ARCH_X86 */

/* ------------------------------------------------------------------ permute layout (VBMI) */
#if EF_ARCH_X86
/* vpermb and vpmultishiftqb are AVX512_VBMI, vpshrdq AVX512_VBMI2 (Ice Lake, Sapphire Rapids,
 * Zen 4), which the avx512 level does not require: ef_spp_select checks them separately. */
#define SPP_TARGET_VBMI \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2")))

/* Step u of a block: a step that starts a run (u a multiple of RUN) first loads the run's
 * window, 64 activations per row (any column: an unaligned load). vpermb gathers every
 * slot's activation by its 6-bit column, vpdpbusd multiplies them with the step's 64
 * weights. One accumulator per step of the block: vpdpbusd's latency is ~4-5 cycles and a
 * step issues in ~1.5, so one chain would stall. */
#define SPP_STEP(u, idx, acc0, acc1)                                                             \
  {                                                                                              \
    if ((u) % RUN == 0) {                                                                        \
      const uint8_t* xc = x + run_col[(u) / RUN];                                                \
      xa = _mm512_loadu_si512(xc);                                                               \
      xb = _mm512_loadu_si512(xc + ldx);                                                         \
    }                                                                                            \
    const __m512i wv = _mm512_load_si512(block + EF_SPP_COL_BYTES + (u) * 64);                   \
    ef_dpbusd_512(&acc0, _mm512_permutexvar_epi8(idx, xa), wv);                                     \
    ef_dpbusd_512(&acc1, _mm512_permutexvar_epi8(idx, xb), wv);                                     \
  }

/* Two activation rows (one row: spp_groups_1 below), RUN steps per window (1, 2 or 4): a
 * constant after inlining, so the window loads resolve at compile time. */
EF_INLINE SPP_TARGET_VBMI void spp_groups_2(const size_t RUN, const ef_spp_packed* w, size_t g0, size_t g1,
                                            const uint8_t* x, size_t ldx, int32_t* raw, size_t ldr) {
  /* vpmultishiftqb controls: byte j of each qword takes the 8 bits from bit 6j (steps 0-2,
   * after the shifts below) or 16 + 6j (step 3); vpermb ignores the top two */
  const __m512i lo = _mm512_set1_epi64(0x2a241e18120c0600LL), hi = _mm512_set1_epi64(0x3a342e28221c1610LL);
  for (size_t g = g0; g < g1; g++) {
    const __m512i z = _mm512_setzero_si512();
    __m512i a0 = z, a1 = z, a2 = z, a3 = z, b0 = z, b1 = z, b2 = z, b3 = z;
    __m512i xa = z, xb = z; /* the current window of each activation row */
    const size_t s0 = w->group_step[g], s1 = w->group_step[g + 1];
    const uint8_t* block = w->blocks + s0 / EF_SPP_BLOCK * EF_SPP_BLOCK_BYTES;
    const uint32_t* run_col = w->run_col + s0 / RUN;
    for (size_t s = s0; s < s1; s += EF_SPP_BLOCK, block += EF_SPP_BLOCK_BYTES, run_col += EF_SPP_BLOCK / RUN) {
      const __m512i v0 = _mm512_load_si512(block), v1 = _mm512_load_si512(block + 64);
      const __m512i v2 = _mm512_load_si512(block + 128);
      SPP_STEP(0, _mm512_multishift_epi64_epi8(lo, v0), a0, b0)
      SPP_STEP(1, _mm512_multishift_epi64_epi8(lo, _mm512_shrdi_epi64(v0, v1, 48)), a1, b1)
      SPP_STEP(2, _mm512_multishift_epi64_epi8(lo, _mm512_shrdi_epi64(v1, v2, 32)), a2, b2)
      SPP_STEP(3, _mm512_multishift_epi64_epi8(hi, v2), a3, b3)
    }
    /* sum x*w = sum (x + 128) * w - 128 * wsum */
    const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(w->wsum + g * EF_SPP_ROWS), 7);
    const __m512i ra = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
    _mm512_storeu_si512(raw + g * EF_SPP_ROWS, _mm512_sub_epi32(ra, corr));
    const __m512i rb = _mm512_add_epi32(_mm512_add_epi32(b0, b1), _mm512_add_epi32(b2, b3));
    _mm512_storeu_si512(raw + ldr + g * EF_SPP_ROWS, _mm512_sub_epi32(rb, corr));
  }
}

/* One activation row: the block's four steps in one asm statement. GCC 12 copied two of the
 * four accumulators in and out of a scratch register around every vpdpbusd of this loop
 * (tied asm or intrinsics alike), which costs two vector uops per block on the ports the
 * permutes need. w0..w3: the windows of steps 0..3 (the same register for steps of one run). */
EF_INLINE SPP_TARGET_VBMI void spp_block_1(const uint8_t* block, __m512i w0, __m512i w1, __m512i w2, __m512i w3,
                                           __m512i lo, __m512i hi, __m512i* a0, __m512i* a1, __m512i* a2,
                                           __m512i* a3) {
  __m512i v0, v1, v2, t;
  __asm__(
      "vmovdqa64 (%[b]), %[v0]\n\t"
      "vmovdqa64 64(%[b]), %[v1]\n\t"
      "vmovdqa64 128(%[b]), %[v2]\n\t"
      "vpmultishiftqb %[v0], %[lo], %[t]\n\t"
      "vpermb %[w0], %[t], %[t]\n\t"
      "vpdpbusd 192(%[b]), %[t], %[a0]\n\t"
      "vpshrdq $48, %[v1], %[v0], %[t]\n\t"
      "vpmultishiftqb %[t], %[lo], %[t]\n\t"
      "vpermb %[w1], %[t], %[t]\n\t"
      "vpdpbusd 256(%[b]), %[t], %[a1]\n\t"
      "vpshrdq $32, %[v2], %[v1], %[t]\n\t"
      "vpmultishiftqb %[t], %[lo], %[t]\n\t"
      "vpermb %[w2], %[t], %[t]\n\t"
      "vpdpbusd 320(%[b]), %[t], %[a2]\n\t"
      "vpmultishiftqb %[v2], %[hi], %[t]\n\t"
      "vpermb %[w3], %[t], %[t]\n\t"
      "vpdpbusd 384(%[b]), %[t], %[a3]\n\t"
      : [a0] "+v"(*a0), [a1] "+v"(*a1), [a2] "+v"(*a2), [a3] "+v"(*a3), [v0] "=&v"(v0), [v1] "=&v"(v1),
        [v2] "=&v"(v2), [t] "=&v"(t)
      : [b] "r"(block), "m"(*(const uint8_t(*)[EF_SPP_BLOCK_BYTES])block), /* the block the asm reads */
        [w0] "v"(w0), [w1] "v"(w1), [w2] "v"(w2), [w3] "v"(w3), [lo] "v"(lo), [hi] "v"(hi));
}

EF_INLINE SPP_TARGET_VBMI void spp_groups_1(const size_t RUN, const ef_spp_packed* w, size_t g0, size_t g1,
                                            const uint8_t* x, int32_t* raw) {
  const __m512i lo = _mm512_set1_epi64(0x2a241e18120c0600LL), hi = _mm512_set1_epi64(0x3a342e28221c1610LL);
  for (size_t g = g0; g < g1; g++) {
    const __m512i z = _mm512_setzero_si512();
    __m512i a0 = z, a1 = z, a2 = z, a3 = z;
    const size_t s0 = w->group_step[g], s1 = w->group_step[g + 1];
    const uint8_t* block = w->blocks + s0 / EF_SPP_BLOCK * EF_SPP_BLOCK_BYTES;
    const uint32_t* run_col = w->run_col + s0 / RUN;
    for (size_t s = s0; s < s1; s += EF_SPP_BLOCK, block += EF_SPP_BLOCK_BYTES, run_col += EF_SPP_BLOCK / RUN) {
      const __m512i x0 = _mm512_loadu_si512(x + run_col[0]);
      /* the windows of steps 0..3: one per run */
      const __m512i x1 = RUN == 1 ? _mm512_loadu_si512(x + run_col[1]) : x0;
      const __m512i x2 = RUN == 1 ? _mm512_loadu_si512(x + run_col[2]) : RUN == 2 ? _mm512_loadu_si512(x + run_col[1]) : x0;
      const __m512i x3 = RUN == 1 ? _mm512_loadu_si512(x + run_col[3]) : RUN == 2 ? x2 : x0;
      spp_block_1(block, x0, x1, x2, x3, lo, hi, &a0, &a1, &a2, &a3);
    }
    const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(w->wsum + g * EF_SPP_ROWS), 7);
    const __m512i ra = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
    _mm512_storeu_si512(raw + g * EF_SPP_ROWS, _mm512_sub_epi32(ra, corr));
  }
}

static SPP_TARGET_VBMI void ef_qs8_spmv_permute_ukernel_2x16x64__avx512vbmi(const ef_spp_packed* w, size_t g0,
                                                                             size_t g1, size_t mr, const uint8_t* x,
                                                                             size_t ldx, int32_t* raw, size_t ldr) {
  if (mr >= 2) {
    switch (w->run) {
      case 1: spp_groups_2(1, w, g0, g1, x, ldx, raw, ldr); break;
      case 2: spp_groups_2(2, w, g0, g1, x, ldx, raw, ldr); break;
      default: spp_groups_2(4, w, g0, g1, x, ldx, raw, ldr); break;
    }
  } else {
    switch (w->run) {
      case 1: spp_groups_1(1, w, g0, g1, x, raw); break;
      case 2: spp_groups_1(2, w, g0, g1, x, raw); break;
      default: spp_groups_1(4, w, g0, g1, x, raw); break;
    }
  }
}

const ef_spp_config ef_spp_config_avx512vbmi = {
    .isa = "avx512",
    .x_format = EF_SPB_X_U8,
    .ukernel = ef_qs8_spmv_permute_ukernel_2x16x64__avx512vbmi,
    .out_row = ef_sparse_qs8_out_row__avx512,
};
#endif /* EF_ARCH_X86 */
