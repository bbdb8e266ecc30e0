/* AVX-VNNI qs8-gemm kernels: MR x 16 tiles with vpdpbusd (u8 x s8, four products summed
 * into each int32 lane, no intermediate saturation, so exact for every input).
 *
 * vpdpbusd needs one operand unsigned: activations are prepared as a + 128 (uint8), and the
 * offset is removed in int32 afterwards: sum (a + 128) * w = sum a * w + 128 * colsum.
 * |sum (a + 128) * w| <= K * 255 * 128, inside int32 for every K <= EF_QS8_MAX_K.
 *
 * The packed weights are the shared c2 layout (K pairs). vpdpbusd wants four K values of
 * one column in each 32-bit lane, so two consecutive pair rows are interleaved 16 bits at
 * a time (vpunpcklwd / vpunpckhwd): that yields columns {0-3, 8-11} and {4-7, 12-15} with
 * k..k+3 together; the accumulators keep that order and one lane permute per row restores
 * it before the epilogue. 64 multiply-adds per vpdpbusd pair and row, against 16 per
 * vpmaddwd in the AVX2 kernels. */
#include "qs8-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#include "qs8-gemm/avx2-epilogue.h"

EF_INLINE EF_TARGET_AVXVNNI void gemm_tile(const size_t MR, size_t nc, size_t kp, const uint8_t* a, size_t a_stride,
                                           const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum,
                                           const uint8_t* block, void* c, size_t c_stride, const ef_qs8_gemm_params* p) {
  __m256i acc_a[EF_QS8_MR_MAX], acc_b[EF_QS8_MR_MAX]; /* columns {0-3, 8-11} and {4-7, 12-15} */
  for (size_t r = 0; r < MR; r++) acc_a[r] = acc_b[r] = _mm256_setzero_si256();

  const int8_t* w = (const int8_t*)(block + EF_QS8_BLOCK_HEADER_BYTES);
  for (size_t kk = 0; kk < kp; kk += 4) { /* kp is a multiple of 4 */
    const __m256i pair0 = _mm256_load_si256((const __m256i*)w);        /* k, k+1 */
    const __m256i pair1 = _mm256_load_si256((const __m256i*)(w + 32)); /* k+2, k+3 */
    w += 4 * EF_QS8_NR;
    const __m256i quad_a = _mm256_unpacklo_epi16(pair0, pair1);
    const __m256i quad_b = _mm256_unpackhi_epi16(pair0, pair1);
    for (size_t r = 0; r < MR; r++) {
      const __m256i av = _mm256_set1_epi32(ef_load_i32(a + r * a_stride + kk));
      acc_a[r] = _mm256_dpbusd_avx_epi32(acc_a[r], av, quad_a);
      acc_b[r] = _mm256_dpbusd_avx_epi32(acc_b[r], av, quad_b);
    }
  }

  const __m256i colsum_lo = _mm256_loadu_si256((const __m256i*)block);
  const __m256i colsum_hi = _mm256_loadu_si256((const __m256i*)block + 1);
  const size_t elem = p->out_int8 ? 1 : sizeof(float);
  int8_t q_tmp[16];
  for (size_t r = 0; r < MR; r++) {
    /* back to column order, then remove the +128 offset of the activations */
    __m256i lo = _mm256_permute2x128_si256(acc_a[r], acc_b[r], 0x20); /* columns 0-7 */
    __m256i hi = _mm256_permute2x128_si256(acc_a[r], acc_b[r], 0x31); /* columns 8-15 */
    lo = _mm256_sub_epi32(lo, _mm256_slli_epi32(colsum_lo, 7));
    hi = _mm256_sub_epi32(hi, _mm256_slli_epi32(colsum_hi, 7));
    uint8_t* crow = (uint8_t*)c + r * c_stride * elem;
    ef_qs8_store_8__avx2(lo, 0, nc, a_zp[r], a_scale[r], a_rowsum[r], block, crow, p, q_tmp);
    if (nc > 8) ef_qs8_store_8__avx2(hi, 8, nc - 8, a_zp[r], a_scale[r], a_rowsum[r], block, crow + 8 * elem, p, q_tmp);
  }
}

#define DEFINE_KERNEL(MR)                                                                                       \
  static EF_TARGET_AVXVNNI void ef_qs8_qc8w_gemm_minmax_ukernel_##MR##x16c4__avxvnni(                           \
      size_t mr, size_t nc, size_t kp, const void* a, size_t a_stride, const int32_t* a_zp,                   \
      const float* a_scale, const int32_t* a_rowsum, const uint8_t* block, void* c, size_t c_stride,          \
      const ef_qs8_gemm_params* p) {                                                                            \
    gemm_tile(MR, nc, kp, (const uint8_t*)a, a_stride, a_zp, a_scale, a_rowsum, block, c, c_stride, p);        \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)
DEFINE_KERNEL(3)
DEFINE_KERNEL(4)

const ef_qs8_gemm_config ef_qs8_gemm_config_avxvnni = {
    .isa = "avxvnni",
    .arch_flags = EF_ARCH_X86_AVX2 | EF_ARCH_X86_AVXVNNI,
    .mr = 4,
    .a_u8 = 1,
    .ukernel = {ef_qs8_qc8w_gemm_minmax_ukernel_1x16c4__avxvnni, ef_qs8_qc8w_gemm_minmax_ukernel_2x16c4__avxvnni,
                ef_qs8_qc8w_gemm_minmax_ukernel_3x16c4__avxvnni, ef_qs8_qc8w_gemm_minmax_ukernel_4x16c4__avxvnni},
};
#endif /* EF_ARCH_X86 */
