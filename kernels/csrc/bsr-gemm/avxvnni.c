/* AVX-VNNI bsr-gemm kernels: MR x 16 tiles, one 16 x 4 block per step with vpdpbusd.
 *
 * A block is stored in vpdpbusd's lane layout (channel j's k..k+3 in bytes 4j..4j+3), so its
 * two halves are the weight operands as loaded: channels 0-7 and 8-15, no shuffles. The
 * activations are uint8 a + 128 (vpdpbusd is u8 x s8, exact with no intermediate
 * saturation); the offset is removed once per tile as 128 * colsum (colsum covers every
 * weight of the channel, and the skipped blocks are zero, so the sum is the same). */
#include "bsr-gemm/bsr-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#include "qs8-gemm/avx2-epilogue.h"

EF_INLINE EF_TARGET_AVXVNNI void bsr_tile(const size_t MR, size_t nc, size_t nb, const uint32_t* kofs,
                                          const int8_t* w, const uint8_t* a, size_t a_stride, const int32_t* a_zp,
                                          const float* a_scale, const int32_t* a_rowsum, const uint8_t* header,
                                          void* c, size_t c_stride, const ef_qs8_gemm_params* p) {
  __m256i acc_lo[EF_BSR_MR_MAX], acc_hi[EF_BSR_MR_MAX];
  for (size_t r = 0; r < MR; r++) acc_lo[r] = acc_hi[r] = _mm256_setzero_si256();
  for (size_t b = 0; b < nb; b++, w += EF_BSR_BLOCK_BYTES) {
    const size_t k0 = kofs[b];
    const __m256i w_lo = _mm256_load_si256((const __m256i*)w);
    const __m256i w_hi = _mm256_load_si256((const __m256i*)(w + 32));
    for (size_t r = 0; r < MR; r++) {
      const __m256i av = _mm256_set1_epi32(ef_load_i32(a + r * a_stride + k0));
      acc_lo[r] = _mm256_dpbusd_avx_epi32(acc_lo[r], av, w_lo);
      acc_hi[r] = _mm256_dpbusd_avx_epi32(acc_hi[r], av, w_hi);
    }
  }
  const __m256i off_lo = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i*)header), 7);
  const __m256i off_hi = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i*)header + 1), 7);
  const size_t elem = p->out_int8 ? 1 : sizeof(float);
  int8_t q_tmp[16];
  for (size_t r = 0; r < MR; r++) {
    uint8_t* crow = (uint8_t*)c + r * c_stride * elem;
    ef_qs8_store_8__avx2(_mm256_sub_epi32(acc_lo[r], off_lo), 0, nc, a_zp[r], a_scale[r], a_rowsum[r], header, crow,
                         p, q_tmp);
    if (nc > 8)
      ef_qs8_store_8__avx2(_mm256_sub_epi32(acc_hi[r], off_hi), 8, nc - 8, a_zp[r], a_scale[r], a_rowsum[r], header,
                           crow + 8 * elem, p, q_tmp);
  }
}

#define DEFINE_KERNEL(MR)                                                                                          \
  static EF_TARGET_AVXVNNI void ef_qs8_qc8w_bsrgemm_minmax_ukernel_##MR##x16c4__avxvnni(                         \
      size_t mr, size_t nc, size_t nb, const uint32_t* kofs, const int8_t* w, const void* a, size_t a_stride,      \
      const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum, const uint8_t* header, void* c,          \
      size_t c_stride, const ef_qs8_gemm_params* p) {                                                               \
    bsr_tile(MR, nc, nb, kofs, w, (const uint8_t*)a, a_stride, a_zp, a_scale, a_rowsum, header, c, c_stride, p); \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)
DEFINE_KERNEL(3)
DEFINE_KERNEL(4)

const ef_bsr_config ef_bsr_config_avxvnni = {
    .isa = "avxvnni",
    .arch_flags = EF_ARCH_X86_AVX2 | EF_ARCH_X86_AVXVNNI,
    .mr = 4,
    .a_u8 = 1,
    .ukernel = {ef_qs8_qc8w_bsrgemm_minmax_ukernel_1x16c4__avxvnni, ef_qs8_qc8w_bsrgemm_minmax_ukernel_2x16c4__avxvnni,
                ef_qs8_qc8w_bsrgemm_minmax_ukernel_3x16c4__avxvnni, ef_qs8_qc8w_bsrgemm_minmax_ukernel_4x16c4__avxvnni},
};
#endif /* EF_ARCH_X86 */
