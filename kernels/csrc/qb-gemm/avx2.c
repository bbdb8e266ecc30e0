/* AVX2 qb-gemm kernels: MR rows x NR columns (MR * NR <= 4), one 32-weight chunk per step;
 * the body is the x86 template in avx2-tile.h, shared with avxvnni.c.
 *
 * A chunk is unpacked into 32 unsigned bytes (4-bit: mask and shift; 2-bit: broadcast the
 * 8 bytes to four 64-bit lanes and shift each lane by 0/2/4/6) and multiplied with the
 * int8 activations by vpmaddubsw (u8 x s8 -> int16 pairs). Here that instruction is
 * exact: |q| <= 15, |x| <= 128, so a pair is at most 2 * 15 * 128 = 3840, far from int16
 * saturation. vpmaddwd with ones widens to int32; per group the int32 vector is converted
 * once and scaled by d with one FMA. The activations are loaded once per chunk and reused
 * by the NR columns, each unpacked chunk by the MR rows. */
#include <math.h>
#include <string.h>

#include "qb-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

/* The portable activation quantizer with the same IEEE operations, 8 floats at a time (max
 * ignores NaN like fmaxf, NaN clamps to -127, vcvtps2dq rounds half to even like nearbyintf);
 * tested byte for byte against it in the C harness. Used by the avx2 and avxvnni configs. */
EF_TARGET_AVX2 float ef_qd8_quantize_row__avx2(const float* x, size_t k, size_t kp, size_t group, int8_t* xq, float* xsum) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 vmax = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= k; i += 8) vmax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), absmask), vmax);
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  float amax = _mm_cvtss_f32(m4);
  for (; i < k; i++) amax = fmaxf(amax, fabsf(x[i]));
  const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
  const float inv = 1.0f / scale;
  const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i q[4];
  for (i = 0; i + 32 <= k; i += 32) {
    for (int j = 0; j < 4; j++) {
      __m256 t = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), vinv);
      t = _mm256_min_ps(_mm256_max_ps(t, lo), hi); /* NaN t -> -127 (max returns its second operand) */
      q[j] = _mm256_cvtps_epi32(t);
    }
    /* the packs interleave 128-bit lanes; the permutation puts the 32 bytes back in order */
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i*)(xq + i), _mm256_permutevar8x32_epi32(b, order));
  }
  for (; i < k; i++) {
    float t = x[i] * inv;
    t = t > -127.0f ? t : -127.0f;
    t = t < 127.0f ? t : 127.0f;
    xq[i] = (int8_t)nearbyintf(t);
  }
  memset(xq + k, 0, kp - k);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (size_t g = 0; g < kp / group; g++) {
    __m256i s = _mm256_setzero_si256();
    for (size_t o = 0; o < group; o += 32) {
      const __m256i v = _mm256_loadu_si256((const __m256i*)(xq + g * group + o));
      s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16)); /* exact: |pair| <= 256 */
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    xsum[g] = (float)_mm_cvtsi128_si32(s4);
  }
  return scale;
}

#define QB_TARGET EF_TARGET_AVX2
#define QB_DOT(acc, q, x) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((q), (x)), _mm256_set1_epi16(1)))
#define QB_NAME(name) name##__avx2
#include "qb-gemm/avx2-tile.h"

const ef_qb_gemm_config ef_qb_gemm_config_avx2 = {
    .isa = "avx2",
    .quantize = ef_qd8_quantize_row__avx2,
    .mr = 4,
    .nr = {4, 2, 1, 1},
    .q4 = {ef_qd8_f32_qb4w_gemm_ukernel_1x4c32__avx2, ef_qd8_f32_qb4w_gemm_ukernel_2x2c32__avx2,
           ef_qd8_f32_qb4w_gemm_ukernel_3x1c32__avx2, ef_qd8_f32_qb4w_gemm_ukernel_4x1c32__avx2},
    .q2 = {ef_qd8_f32_qb2w_gemm_ukernel_1x4c32__avx2, ef_qd8_f32_qb2w_gemm_ukernel_2x2c32__avx2,
           ef_qd8_f32_qb2w_gemm_ukernel_3x1c32__avx2, ef_qd8_f32_qb2w_gemm_ukernel_4x1c32__avx2},
};
#endif /* EF_ARCH_X86 */
