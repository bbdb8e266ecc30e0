/* AVX2 qb-gemm kernels: MR rows x 1 column, one 32-weight chunk per step.
 *
 * A chunk is unpacked into 32 unsigned bytes (4-bit: mask and shift; 2-bit: broadcast the
 * 8 bytes to four 64-bit lanes and shift each lane by 0/2/4/6) and multiplied with the
 * int8 activations by vpmaddubsw (u8 x s8 -> int16 pairs). Here that instruction is
 * exact: |q| <= 15, |x| <= 128, so a pair is at most 2 * 15 * 128 = 3840, far from int16
 * saturation. vpmaddwd with ones widens to int32; per group the int32 vector is converted
 * once and scaled by d with one FMA. The activations are loaded once per chunk and reused
 * by the NR columns, each unpacked chunk by the MR rows. */
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

/* MR rows x NR columns of output; MR * NR <= 4 keeps the int32 group sums, the float
 * accumulators and the activations in registers. Several columns per call give the
 * per-group float FMA chains independent neighbours (one column alone is latency-bound). */
EF_INLINE EF_TARGET_AVX2 void qb_tile(const int BITS, const size_t MR, const size_t NR, size_t groups, size_t group,
                                      const int8_t* xq, size_t x_stride, const int32_t* xsum, const float* sx,
                                      const uint8_t* rows, size_t row_bytes, const float* bias, float* c, size_t c_stride) {
  const size_t block_bytes = EF_QB_BLOCK_BYTES(BITS, group);
  const size_t chunks = group / EF_QB_CHUNK;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[4][4];
  float acc_m[4][4];
  for (size_t r = 0; r < MR; r++)
    for (size_t j = 0; j < NR; j++) { acc[r][j] = _mm256_setzero_ps(); acc_m[r][j] = 0.0f; }

  for (size_t g = 0; g < groups; g++) {
    __m256i isum[4][4];
    for (size_t r = 0; r < MR; r++)
      for (size_t j = 0; j < NR; j++) isum[r][j] = _mm256_setzero_si256();
    for (size_t ch = 0; ch < chunks; ch++) {
      const size_t k0 = g * group + ch * EF_QB_CHUNK;
      __m256i x[4];
      for (size_t r = 0; r < MR; r++) x[r] = _mm256_loadu_si256((const __m256i*)(xq + r * x_stride + k0));
      for (size_t j = 0; j < NR; j++) {
        const uint8_t* qs = rows + j * row_bytes + g * block_bytes + EF_QB_HEADER_BYTES;
        const __m256i q = BITS == 4 ? unpack_q4(qs + ch * 16) : unpack_q2(qs + ch * 8);
        for (size_t r = 0; r < MR; r++)
          isum[r][j] = _mm256_add_epi32(isum[r][j], _mm256_madd_epi16(_mm256_maddubs_epi16(q, x[r]), ones));
      }
    }
    for (size_t j = 0; j < NR; j++) {
      const uint8_t* block = rows + j * row_bytes + g * block_bytes;
      float d, mm;
      memcpy(&d, block, 4);
      memcpy(&mm, block + 4, 4);
      const __m256 vd = _mm256_set1_ps(d);
      for (size_t r = 0; r < MR; r++) {
        acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][j]), vd, acc[r][j]);
        acc_m[r][j] += mm * (float)xsum[r * groups + g];
      }
    }
  }
  for (size_t r = 0; r < MR; r++)
    for (size_t j = 0; j < NR; j++) c[r * c_stride + j] = (hsum_ps(acc[r][j]) + acc_m[r][j]) * sx[r] + bias[j];
}

/* Full tiles use NR columns; a partial tile at the end of a thread's range goes column by column. */
#define DEFINE_KERNEL(BITS, MR, NR)                                                                                 \
  static EF_TARGET_AVX2 void ef_qd8_f32_qb##BITS##w_gemm_ukernel_##MR##x##NR##c32__avx2(                           \
      size_t mr, size_t nc, size_t groups, size_t group, const int8_t* xq, size_t x_stride, const int32_t* xsum,    \
      const float* sx, const uint8_t* rows, size_t row_bytes, const float* bias, float* c, size_t c_stride) {       \
    if (nc == NR) {                                                                                                 \
      qb_tile(BITS, MR, NR, groups, group, xq, x_stride, xsum, sx, rows, row_bytes, bias, c, c_stride);             \
    } else {                                                                                                        \
      for (size_t j = 0; j < nc; j++)                                                                               \
        qb_tile(BITS, MR, 1, groups, group, xq, x_stride, xsum, sx, rows + j * row_bytes, row_bytes, bias + j,      \
                c + j, c_stride);                                                                                   \
    }                                                                                                               \
  }
DEFINE_KERNEL(4, 1, 4)
DEFINE_KERNEL(4, 2, 2)
DEFINE_KERNEL(4, 3, 1)
DEFINE_KERNEL(4, 4, 1)
DEFINE_KERNEL(2, 1, 4)
DEFINE_KERNEL(2, 2, 2)
DEFINE_KERNEL(2, 3, 1)
DEFINE_KERNEL(2, 4, 1)

const ef_qb_gemm_config ef_qb_gemm_config_avx2 = {
    .isa = "avx2",
    .mr = 4,
    .nr = {4, 2, 1, 1},
    .q4 = {ef_qd8_f32_qb4w_gemm_ukernel_1x4c32__avx2, ef_qd8_f32_qb4w_gemm_ukernel_2x2c32__avx2,
           ef_qd8_f32_qb4w_gemm_ukernel_3x1c32__avx2, ef_qd8_f32_qb4w_gemm_ukernel_4x1c32__avx2},
    .q2 = {ef_qd8_f32_qb2w_gemm_ukernel_1x4c32__avx2, ef_qd8_f32_qb2w_gemm_ukernel_2x2c32__avx2,
           ef_qd8_f32_qb2w_gemm_ukernel_3x1c32__avx2, ef_qd8_f32_qb2w_gemm_ukernel_4x1c32__avx2},
};
#endif /* EF_ARCH_X86 */
