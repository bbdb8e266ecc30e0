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
#include "qb-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#define QB_TARGET EF_TARGET_AVX2
#define QB_DOT(acc, q, x) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((q), (x)), _mm256_set1_epi16(1)))
#define QB_NAME(name) name##__avx2
#include "qb-gemm/avx2-tile.h"

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
