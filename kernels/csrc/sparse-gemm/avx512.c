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

/* Two activation rows: the block's four steps in one asm statement, as for one row below
 * (the same copies around vpdpbusd otherwise). Each step's columns are unpacked once and serve
 * both rows; the step's weights are loaded once into a register. xa*, xb*: the windows of the
 * two rows for steps 0..3. */
EF_INLINE SPP_TARGET_VBMI void spp_block_2(const uint8_t* block, __m512i xa0, __m512i xa1, __m512i xa2,
                                           __m512i xa3, __m512i xb0, __m512i xb1, __m512i xb2, __m512i xb3,
                                           __m512i lo, __m512i hi, __m512i* a, __m512i* b) {
  __m512i v0, v1, v2, t, u, wv;
#define SPP2_STEP(XA, XB, W, N)                         \
  "vpermb %[" XA "], %[t], %[u]\n\t"                    \
  "vmovdqa64 " W "(%[blk]), %[wv]\n\t"                  \
  "vpdpbusd %[wv], %[u], %[a" N "]\n\t"                 \
  "vpermb %[" XB "], %[t], %[u]\n\t"                    \
  "vpdpbusd %[wv], %[u], %[b" N "]\n\t"
  /* two statements (steps 0-1, 2-3): one would need more than GCC's 30 asm operands */
  __asm__(
      "vmovdqa64 (%[blk]), %[v0]\n\t"
      "vmovdqa64 64(%[blk]), %[v1]\n\t"
      "vmovdqa64 128(%[blk]), %[v2]\n\t"
      "vpmultishiftqb %[v0], %[lo], %[t]\n\t"
      SPP2_STEP("xa0", "xb0", "192", "0")
      "vpshrdq $48, %[v1], %[v0], %[t]\n\t"
      "vpmultishiftqb %[t], %[lo], %[t]\n\t"
      SPP2_STEP("xa1", "xb1", "256", "1")
      : [a0] "+v"(a[0]), [a1] "+v"(a[1]), [b0] "+v"(b[0]), [b1] "+v"(b[1]), [v0] "=&v"(v0), [v1] "=&v"(v1),
        [v2] "=&v"(v2), [t] "=&v"(t), [u] "=&v"(u), [wv] "=&v"(wv)
      : [blk] "r"(block), "m"(*(const uint8_t(*)[EF_SPP_BLOCK_BYTES])block), [xa0] "v"(xa0), [xa1] "v"(xa1),
        [xb0] "v"(xb0), [xb1] "v"(xb1), [lo] "v"(lo));
  __asm__(
      "vpshrdq $32, %[v2], %[v1], %[t]\n\t"
      "vpmultishiftqb %[t], %[lo], %[t]\n\t"
      SPP2_STEP("xa2", "xb2", "320", "2")
      "vpmultishiftqb %[v2], %[hi], %[t]\n\t"
      SPP2_STEP("xa3", "xb3", "384", "3")
      : [a2] "+v"(a[2]), [a3] "+v"(a[3]), [b2] "+v"(b[2]), [b3] "+v"(b[3]), [t] "=&v"(t), [u] "=&v"(u),
        [wv] "=&v"(wv)
      : [blk] "r"(block), "m"(*(const uint8_t(*)[EF_SPP_BLOCK_BYTES])block), [v1] "v"(v1), [v2] "v"(v2),
        [xa2] "v"(xa2), [xa3] "v"(xa3), [xb2] "v"(xb2), [xb3] "v"(xb3), [lo] "v"(lo), [hi] "v"(hi));
#undef SPP2_STEP
}

/* vpmultishiftqb controls: byte j of each qword takes the 8 bits from bit 6j (steps 0-2, after
 * the vpshrdq shifts) or 16 + 6j (step 3); vpermb ignores the top two */
#define SPP_MULTISHIFT_LO 0x2a241e18120c0600LL
#define SPP_MULTISHIFT_HI 0x3a342e28221c1610LL

/* The windows of steps 0..3 of a block for one activation row at x: one per run, each an
 * unaligned load of 64 activations at the run's first column. RUN is a constant. */
#define SPP_WINDOWS(RUN, x, run_col, w0, w1, w2, w3)                                                                \
  const __m512i w0 = _mm512_loadu_si512((x) + (run_col)[0]);                                                       \
  const __m512i w1 = (RUN) == 1 ? _mm512_loadu_si512((x) + (run_col)[1]) : w0;                                     \
  const __m512i w2 = (RUN) == 1 ? _mm512_loadu_si512((x) + (run_col)[2])                                           \
                     : (RUN) == 2 ? _mm512_loadu_si512((x) + (run_col)[1]) : w0;                                   \
  const __m512i w3 = (RUN) == 1 ? _mm512_loadu_si512((x) + (run_col)[3]) : (RUN) == 2 ? w2 : w0;

/* Two activation rows (one row: spp_groups_1 below), RUN steps per window (1, 2 or 4): a
 * constant after inlining, so the window loads resolve at compile time. */
EF_INLINE SPP_TARGET_VBMI void spp_groups_2(const size_t RUN, const ef_spp_packed* w, size_t g0, size_t g1,
                                            const uint8_t* x, size_t ldx, int32_t* raw, size_t ldr) {
  const __m512i lo = _mm512_set1_epi64(SPP_MULTISHIFT_LO), hi = _mm512_set1_epi64(SPP_MULTISHIFT_HI);
  for (size_t g = g0; g < g1; g++) {
    const __m512i z = _mm512_setzero_si512();
    __m512i a[4] = {z, z, z, z}, b[4] = {z, z, z, z};
    const size_t s0 = w->group_step[g], s1 = w->group_step[g + 1];
    const uint8_t* block = w->blocks + s0 / EF_SPP_BLOCK * EF_SPP_BLOCK_BYTES;
    const uint32_t* run_col = w->run_col + s0 / RUN;
    for (size_t s = s0; s < s1; s += EF_SPP_BLOCK, block += EF_SPP_BLOCK_BYTES, run_col += EF_SPP_BLOCK / RUN) {
      SPP_WINDOWS(RUN, x, run_col, xa0, xa1, xa2, xa3)
      SPP_WINDOWS(RUN, x + ldx, run_col, xb0, xb1, xb2, xb3)
      spp_block_2(block, xa0, xa1, xa2, xa3, xb0, xb1, xb2, xb3, lo, hi, a, b);
    }
    /* sum x*w = sum (x + 128) * w - 128 * wsum */
    const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(w->wsum + g * EF_SPP_ROWS), 7);
    const __m512i ra = _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3]));
    _mm512_storeu_si512(raw + g * EF_SPP_ROWS, _mm512_sub_epi32(ra, corr));
    const __m512i rb = _mm512_add_epi32(_mm512_add_epi32(b[0], b[1]), _mm512_add_epi32(b[2], b[3]));
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
  const __m512i lo = _mm512_set1_epi64(SPP_MULTISHIFT_LO), hi = _mm512_set1_epi64(SPP_MULTISHIFT_HI);
  for (size_t g = g0; g < g1; g++) {
    const __m512i z = _mm512_setzero_si512();
    __m512i a0 = z, a1 = z, a2 = z, a3 = z;
    const size_t s0 = w->group_step[g], s1 = w->group_step[g + 1];
    const uint8_t* block = w->blocks + s0 / EF_SPP_BLOCK * EF_SPP_BLOCK_BYTES;
    const uint32_t* run_col = w->run_col + s0 / RUN;
    for (size_t s = s0; s < s1; s += EF_SPP_BLOCK, block += EF_SPP_BLOCK_BYTES, run_col += EF_SPP_BLOCK / RUN) {
      SPP_WINDOWS(RUN, x, run_col, x0, x1, x2, x3)
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
