/* AVX-512 VNNI bsr-gemm kernels: MR x 16 tiles, one 16 x 4 block = one zmm = one vpdpbusd per
 * row. Same arithmetic as avxvnni.c (uint8 a + 128, corrected by 128 * colsum), with the
 * qs8 AVX-512 epilogue (one zmm per row), bit-exact with the scalar definition in qs8-gemm.h. */
#include "bsr-gemm/bsr-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#include "dot-avx512.h"
#include "qs8-gemm/avx512-epilogue.h"

/* The exact sums of MR rows (1..4, a constant after inlining) against one group's blocks:
 * per block one 16 x 4 weight vector and one vpdpbusd per row with that row's 4 activations
 * at the block's K offset, broadcast. The sums live in named registers and reach accs once at
 * the end: accumulating into accs[r] made GCC 12 store every accumulator to the stack after
 * each vpdpbusd (the array stays in memory for the caller's loop over a variable row). */
#define BSR_ROW(r)                                                                            \
  if (MR > r) ef_dpbusd_512(&s##r, _mm512_set1_epi32(ef_load_i32(a + r * a_stride + k0)), wv);
EF_INLINE EF_TARGET_AVX512 void bsr_sums(const size_t MR, size_t nb, const uint32_t* kofs, const int8_t* w,
                                         const uint8_t* a, size_t a_stride, __m512i accs[EF_BSR_MR_MAX]) {
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t b = 0; b < nb; b++, w += EF_BSR_BLOCK_BYTES) {
    const size_t k0 = kofs[b];
    const __m512i wv = _mm512_load_si512((const void*)w);
    BSR_ROW(0)
    BSR_ROW(1)
    BSR_ROW(2)
    BSR_ROW(3)
  }
  accs[0] = s0;
  if (MR > 1) accs[1] = s1;
  if (MR > 2) accs[2] = s2;
  if (MR > 3) accs[3] = s3;
}

/* Every row of one group: the epilogue constants (the block header has the qs8 header's
 * layout, so qs8-gemm/avx512-epilogue.h applies, bit-exact with the scalar definition) are
 * set up once, and when all rows share the activation scale and zero point (per-tensor
 * activations, the CNN case) so are the offset and the scale product. A pointwise
 * convolution of a small CNN has K of 16..32 and 1..2 blocks per group, where this setup
 * costs about as much as the multiply-adds of a tile. */
EF_INLINE EF_TARGET_AVX512 void bsr_group(const size_t MR_MAX, size_t m, size_t nc, size_t nb, const uint32_t* kofs,
                                          const int8_t* w, const uint8_t* a, size_t a_stride, const int32_t* a_zp,
                                          const float* a_scale, const int32_t* a_rowsum, const uint8_t* header,
                                          void* c, size_t c_stride, const ef_qs8_gemm_params* p) {
  const __m512i w_zp = _mm512_load_si512((const void*)(header + 64));
  const ef_qs8_cols16 v = ef_qs8_load_cols16__avx512(header, _mm512_test_epi32_mask(w_zp, w_zp) != 0, p);
  const __mmask16 cols = (__mmask16)((1u << nc) - 1u);
  const size_t row_bytes = c_stride * (p->out_int8 ? 1 : sizeof(float));
  const int shared = !v.has_w_zp && ef_qs8_rows_share_params(a_zp, a_scale, 0, m);
  const __m512i offset = ef_qs8_offset_16__avx512(a_zp[0], &v);
  const __m512 s = _mm512_mul_ps(_mm512_set1_ps(a_scale[0]), v.w_scale);
  for (size_t m0 = 0; m0 < m; m0 += MR_MAX) {
    __m512i accs[EF_BSR_MR_MAX];
    const size_t mr = EF_MIN(MR_MAX, m - m0);
    const uint8_t* am = a + m0 * a_stride;
    switch (mr) { /* a constant row count for each instance of bsr_sums */
      case 1: bsr_sums(1, nb, kofs, w, am, a_stride, accs); break;
      case 2: bsr_sums(2, nb, kofs, w, am, a_stride, accs); break;
      case 3: bsr_sums(3, nb, kofs, w, am, a_stride, accs); break;
      default: bsr_sums(4, nb, kofs, w, am, a_stride, accs); break;
    }
    for (size_t r = 0; r < mr; r++) {
      const size_t row = m0 + r;
      uint8_t* out = (uint8_t*)c + row * row_bytes;
      if (shared) ef_qs8_finish_16__avx512(_mm512_sub_epi32(accs[r], offset), s, cols, &v, out);
      else ef_qs8_store_16__avx512(accs[r], cols, a_zp[row], a_scale[row], a_rowsum[row], &v, out);
    }
  }
}

#define DEFINE_KERNEL(MR)                                                                                          \
  static EF_TARGET_AVX512 void ef_qs8_qc8w_bsrgemm_minmax_ukernel_##MR##x16c4__avx512vnni(                       \
      size_t mr, size_t nc, size_t nb, const uint32_t* kofs, const int8_t* w, const void* a, size_t a_stride,      \
      const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum, const uint8_t* header, void* c,          \
      size_t c_stride, const ef_qs8_gemm_params* p) {                                                               \
    bsr_group(MR, MR, nc, nb, kofs, w, (const uint8_t*)a, a_stride, a_zp, a_scale, a_rowsum, header, c, c_stride, p); \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)
DEFINE_KERNEL(3)
DEFINE_KERNEL(4)

static EF_TARGET_AVX512 void ef_qs8_qc8w_bsrgemm_minmax_group_4x16c4__avx512vnni(
    size_t m, size_t nc, size_t nb, const uint32_t* kofs, const int8_t* w, const void* a, size_t a_stride,
    const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum, const uint8_t* header, void* c,
    size_t c_stride, const ef_qs8_gemm_params* p) {
  bsr_group(4, m, nc, nb, kofs, w, (const uint8_t*)a, a_stride, a_zp, a_scale, a_rowsum, header, c, c_stride, p);
}

const ef_bsr_config ef_bsr_config_avx512 = {
    .isa = "avx512",
    .arch_flags = EF_ARCH_X86_AVX2 | EF_ARCH_X86_AVX512,
    .mr = 4,
    .a_u8 = 1,
    .ukernel = {ef_qs8_qc8w_bsrgemm_minmax_ukernel_1x16c4__avx512vnni,
                ef_qs8_qc8w_bsrgemm_minmax_ukernel_2x16c4__avx512vnni,
                ef_qs8_qc8w_bsrgemm_minmax_ukernel_3x16c4__avx512vnni,
                ef_qs8_qc8w_bsrgemm_minmax_ukernel_4x16c4__avx512vnni},
    .group = ef_qs8_qc8w_bsrgemm_minmax_group_4x16c4__avx512vnni,
};
#endif /* EF_ARCH_X86 */
