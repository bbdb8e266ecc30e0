/* AVX2 qs8-gemm kernels: MR x 16 output tiles, K consumed in int16 pairs.
 *
 * Why int16 pairs and vpmaddwd rather than vpmaddubsw: AVX2 without VNNI has no int8 dot
 * product that accumulates into int32. vpmaddubsw multiplies u8 x s8 and adds adjacent
 * pairs into int16 *with saturation*: with the usual "+128" offset on activations, two
 * products of 255 * -128 sum to -65280 and saturate, so results would be wrong exactly for
 * the extreme inputs the tests use (all -128/127). Splitting the weights into nibbles
 * avoids that but costs more instructions than it saves. Instead the activations are
 * widened to int16 once per call, the weights are sign-extended from int8 as they are
 * loaded (vpmovsxbw, so packed weights stay 1 byte each), and vpmaddwd multiplies int16
 * pairs into int32: |a*w + a*w| <= 2 * 128 * 128, which cannot overflow. Bit-exact for
 * every int8 input, 16 multiply-adds per vpmaddwd.
 *
 * Register tile: MR rows x 16 columns = 2*MR int32 accumulators (8 for MR=4), two weight
 * vectors, one broadcast activation pair per row. */
#include "qs8-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#include "qs8-gemm/avx2-epilogue.h"

EF_INLINE EF_TARGET_AVX2 void gemm_tile(const size_t MR, size_t nc, size_t kp, const int16_t* a, size_t a_stride,
                                        const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum,
                                        const uint8_t* block, void* c, size_t c_stride, const ef_qs8_gemm_params* p) {
  __m256i acc_lo[EF_QS8_MR_MAX], acc_hi[EF_QS8_MR_MAX]; /* columns 0-7 and 8-15 per row */
  for (size_t r = 0; r < MR; r++) acc_lo[r] = acc_hi[r] = _mm256_setzero_si256();

  const int8_t* w = (const int8_t*)(block + EF_QS8_BLOCK_HEADER_BYTES);
  for (size_t kk = 0; kk < kp; kk += 2) {
    const __m256i w_lo = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*)w));
    const __m256i w_hi = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*)(w + 16)));
    w += 2 * EF_QS8_NR;
    for (size_t r = 0; r < MR; r++) {
      /* (a[k], a[k+1]) as one int32, broadcast to every lane */
      const __m256i av = _mm256_set1_epi32(ef_load_i32(a + r * a_stride + kk));
      acc_lo[r] = _mm256_add_epi32(acc_lo[r], _mm256_madd_epi16(av, w_lo));
      acc_hi[r] = _mm256_add_epi32(acc_hi[r], _mm256_madd_epi16(av, w_hi));
    }
  }

  const size_t elem = p->out_int8 ? 1 : sizeof(float);
  int8_t q_tmp[16];
  for (size_t r = 0; r < MR; r++) {
    uint8_t* crow = (uint8_t*)c + r * c_stride * elem;
    ef_qs8_store_8__avx2(acc_lo[r], 0, nc, a_zp[r], a_scale[r], a_rowsum[r], block, crow, p, q_tmp);
    if (nc > 8) ef_qs8_store_8__avx2(acc_hi[r], 8, nc - 8, a_zp[r], a_scale[r], a_rowsum[r], block, crow + 8 * elem, p, q_tmp);
  }
}

#define DEFINE_KERNEL(MR)                                                                                         \
  static EF_TARGET_AVX2 void ef_qs8_qc8w_gemm_minmax_ukernel_##MR##x16c2__avx2(                                  \
      size_t mr, size_t nc, size_t kp, const void* a_, size_t a_stride, const int32_t* a_zp,                  \
      const float* a_scale, const int32_t* a_rowsum, const uint8_t* block, void* c, size_t c_stride,            \
      const ef_qs8_gemm_params* p) {                                                                              \
    gemm_tile(MR, nc, kp, (const int16_t*)a_, a_stride, a_zp, a_scale, a_rowsum, block, c, c_stride, p);         \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)
DEFINE_KERNEL(3)
DEFINE_KERNEL(4)

const ef_qs8_gemm_config ef_qs8_gemm_config_avx2 = {
    .isa = "avx2",
    .arch_flags = EF_ARCH_X86_AVX2,
    .mr = 4,
    .ukernel = {ef_qs8_qc8w_gemm_minmax_ukernel_1x16c2__avx2, ef_qs8_qc8w_gemm_minmax_ukernel_2x16c2__avx2,
                ef_qs8_qc8w_gemm_minmax_ukernel_3x16c2__avx2, ef_qs8_qc8w_gemm_minmax_ukernel_4x16c2__avx2},
};
#endif /* EF_ARCH_X86 */
