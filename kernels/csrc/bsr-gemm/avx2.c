/* AVX2 bsr-gemm kernels (exact on CPUs without VNNI, e.g. Zen 3): MR x 16 tiles, one 16 x 4
 * block per step.
 *
 * As in qs8-gemm/avx2.c the activations are int16 and the products use vpmaddwd (no
 * saturation possible; vpmaddubsw would saturate for -128/127 inputs). A block holds each
 * channel's 4 K values together (the vpdpbusd lane layout), so one sign-extended 16-byte
 * load gives channels j..j+3 x k..k+3 as int16, and vpmaddwd against the row's 4 int16
 * activations broadcast as one 64-bit value yields two partial sums per channel
 * (k, k+1 and k+2, k+3). Four such vectors per block cover 16 channels; the pairs are added
 * once per tile (vphaddd + one lane permute), not per block.
 *
 * Register tile: 2 rows x 4 accumulators + 4 weight vectors + 1 broadcast = 13 ymm. */
#include "bsr-gemm/bsr-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#include "qs8-gemm/avx2-epilogue.h"

#define MR_AVX2 2

EF_INLINE EF_TARGET_AVX2 __m256i channels_8(__m256i q0, __m256i q1) {
  /* q0 = [c0 c0' c1 c1' | c2 c2' c3 c3'], q1 = the same for c4..c7 (x' = second pair) */
  const __m256i h = _mm256_hadd_epi32(q0, q1); /* [c0 c1 c4 c5 | c2 c3 c6 c7] */
  return _mm256_permute4x64_epi64(h, _MM_SHUFFLE(3, 1, 2, 0));
}

EF_INLINE EF_TARGET_AVX2 void bsr_tile(const size_t MR, size_t nc, size_t nb, const uint32_t* kofs, const int8_t* w,
                                       const int16_t* a, size_t a_stride, const int32_t* a_zp, const float* a_scale,
                                       const int32_t* a_rowsum, const uint8_t* header, void* c, size_t c_stride,
                                       const ef_qs8_gemm_params* p) {
  __m256i acc[MR_AVX2][4];
  for (size_t r = 0; r < MR; r++)
    for (int q = 0; q < 4; q++) acc[r][q] = _mm256_setzero_si256();
  for (size_t b = 0; b < nb; b++, w += EF_BSR_BLOCK_BYTES) {
    const size_t k0 = kofs[b];
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*)w));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*)(w + 16)));
    const __m256i w2 = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*)(w + 32)));
    const __m256i w3 = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*)(w + 48)));
    for (size_t r = 0; r < MR; r++) {
      const __m256i av = _mm256_set1_epi64x((long long)ef_load_u64(a + r * a_stride + k0));
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(av, w0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(av, w1));
      acc[r][2] = _mm256_add_epi32(acc[r][2], _mm256_madd_epi16(av, w2));
      acc[r][3] = _mm256_add_epi32(acc[r][3], _mm256_madd_epi16(av, w3));
    }
  }
  const size_t elem = p->out_int8 ? 1 : sizeof(float);
  int8_t q_tmp[16];
  for (size_t r = 0; r < MR; r++) {
    uint8_t* crow = (uint8_t*)c + r * c_stride * elem;
    ef_qs8_store_8__avx2(channels_8(acc[r][0], acc[r][1]), 0, nc, a_zp[r], a_scale[r], a_rowsum[r], header, crow, p,
                         q_tmp);
    if (nc > 8)
      ef_qs8_store_8__avx2(channels_8(acc[r][2], acc[r][3]), 8, nc - 8, a_zp[r], a_scale[r], a_rowsum[r], header,
                           crow + 8 * elem, p, q_tmp);
  }
}

#define DEFINE_KERNEL(MR)                                                                                          \
  static EF_TARGET_AVX2 void ef_qs8_qc8w_bsrgemm_minmax_ukernel_##MR##x16c4__avx2(                               \
      size_t mr, size_t nc, size_t nb, const uint32_t* kofs, const int8_t* w, const void* a, size_t a_stride,      \
      const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum, const uint8_t* header, void* c,          \
      size_t c_stride, const ef_qs8_gemm_params* p) {                                                               \
    bsr_tile(MR, nc, nb, kofs, w, (const int16_t*)a, a_stride, a_zp, a_scale, a_rowsum, header, c, c_stride, p); \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)

const ef_bsr_config ef_bsr_config_avx2 = {
    .isa = "avx2",
    .arch_flags = EF_ARCH_X86_AVX2,
    .mr = MR_AVX2,
    .a_u8 = 0,
    .ukernel = {ef_qs8_qc8w_bsrgemm_minmax_ukernel_1x16c4__avx2, ef_qs8_qc8w_bsrgemm_minmax_ukernel_2x16c4__avx2,
                ef_qs8_qc8w_bsrgemm_minmax_ukernel_2x16c4__avx2, ef_qs8_qc8w_bsrgemm_minmax_ukernel_2x16c4__avx2},
};
#endif /* EF_ARCH_X86 */
