/* AVX2 qb-gemm kernels: MR rows x 1 column, one 32-weight chunk per step.
 *
 * A chunk is unpacked into 32 unsigned bytes (4-bit: mask and shift; 2-bit: broadcast the
 * 8 bytes to four 64-bit lanes and shift each lane by 0/2/4/6) and multiplied with the
 * int8 activations by vpmaddubsw (u8 x s8 -> int16 pairs). Here that instruction is
 * exact: |q| <= 15, |x| <= 128, so a pair is at most 2 * 15 * 128 = 3840, far from int16
 * saturation. vpmaddwd with ones widens to int32; per group the int32 vector is converted
 * once and scaled by d with one FMA. The unpacked chunk is reused by all MR rows. */
#include "qb-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

EF_INLINE EF_TARGET_AVX2 __m256i unpack_q4(const uint8_t* chunk) {
  const __m128i v = _mm_loadu_si128((const __m128i*)chunk);
  const __m128i mask = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), mask), _mm_and_si128(v, mask));
}

EF_INLINE EF_TARGET_AVX2 __m256i unpack_q2(const uint8_t* chunk) {
  const __m256i v = _mm256_set1_epi64x((long long)ef_load_u64(chunk));
  return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(6, 4, 2, 0)), _mm256_set1_epi8(0x03));
}

EF_INLINE EF_TARGET_AVX2 float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

EF_INLINE EF_TARGET_AVX2 void qb_tile(const int BITS, const size_t MR, size_t groups, size_t group, const int8_t* xq,
                                      size_t x_stride, const int32_t* xsum, const float* sx, const uint8_t* row,
                                      float bias, float* c, size_t c_stride) {
  const size_t block_bytes = EF_QB_BLOCK_BYTES(BITS, group);
  const size_t chunks = group / EF_QB_CHUNK;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[EF_QB_MR_MAX];
  float acc_m[EF_QB_MR_MAX];
  for (size_t r = 0; r < MR; r++) { acc[r] = _mm256_setzero_ps(); acc_m[r] = 0.0f; }

  for (size_t g = 0; g < groups; g++) {
    const uint8_t* block = row + g * block_bytes;
    float d, mm;
    memcpy(&d, block, 4);
    memcpy(&mm, block + 4, 4);
    const uint8_t* qs = block + EF_QB_HEADER_BYTES;
    __m256i isum[EF_QB_MR_MAX];
    for (size_t r = 0; r < MR; r++) isum[r] = _mm256_setzero_si256();
    for (size_t ch = 0; ch < chunks; ch++) {
      const __m256i q = BITS == 4 ? unpack_q4(qs + ch * 16) : unpack_q2(qs + ch * 8);
      const size_t k0 = g * group + ch * EF_QB_CHUNK;
      for (size_t r = 0; r < MR; r++) {
        const __m256i x = _mm256_loadu_si256((const __m256i*)(xq + r * x_stride + k0));
        isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones));
      }
    }
    const __m256 vd = _mm256_set1_ps(d);
    for (size_t r = 0; r < MR; r++) {
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), vd, acc[r]);
      acc_m[r] += mm * (float)xsum[r * groups + g];
    }
  }
  for (size_t r = 0; r < MR; r++) c[r * c_stride] = (hsum_ps(acc[r]) + acc_m[r]) * sx[r] + bias;
}

#define DEFINE_KERNEL(BITS, MR)                                                                                    \
  static EF_TARGET_AVX2 void ef_qd8_f32_qb##BITS##w_gemm_ukernel_##MR##x1c32__avx2(                               \
      size_t mr, size_t groups, size_t group, const int8_t* xq, size_t x_stride, const int32_t* xsum,              \
      const float* sx, const uint8_t* row, float bias, float* c, size_t c_stride) {                                \
    qb_tile(BITS, MR, groups, group, xq, x_stride, xsum, sx, row, bias, c, c_stride);                             \
  }
DEFINE_KERNEL(4, 1)
DEFINE_KERNEL(4, 2)
DEFINE_KERNEL(4, 3)
DEFINE_KERNEL(4, 4)
DEFINE_KERNEL(2, 1)
DEFINE_KERNEL(2, 2)
DEFINE_KERNEL(2, 3)
DEFINE_KERNEL(2, 4)

const ef_qb_gemm_config ef_qb_gemm_config_avx2 = {
    .isa = "avx2",
    .mr = 4,
    .q4 = {ef_qd8_f32_qb4w_gemm_ukernel_1x1c32__avx2, ef_qd8_f32_qb4w_gemm_ukernel_2x1c32__avx2,
           ef_qd8_f32_qb4w_gemm_ukernel_3x1c32__avx2, ef_qd8_f32_qb4w_gemm_ukernel_4x1c32__avx2},
    .q2 = {ef_qd8_f32_qb2w_gemm_ukernel_1x1c32__avx2, ef_qd8_f32_qb2w_gemm_ukernel_2x1c32__avx2,
           ef_qd8_f32_qb2w_gemm_ukernel_3x1c32__avx2, ef_qd8_f32_qb2w_gemm_ukernel_4x1c32__avx2},
};
#endif /* EF_ARCH_X86 */
