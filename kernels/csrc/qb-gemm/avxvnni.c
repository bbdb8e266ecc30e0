/* AVX-VNNI qb-gemm kernels: the shared x86 template (avx2-tile.h, notes in avx2.c) with
 * vpdpbusd as the dot product: unsigned quants x int8 activations, four products per int32
 * lane, no intermediate saturation, replacing vpmaddubsw + vpmaddwd + vpaddd. */
#include "qb-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#define QB_TARGET EF_TARGET_AVXVNNI
#define QB_DOT(acc, q, x) _mm256_dpbusd_avx_epi32((acc), (q), (x))
#define QB_NAME(name) name##__avxvnni
#include "qb-gemm/avx2-tile.h"

const ef_qb_gemm_config ef_qb_gemm_config_avxvnni = {
    .isa = "avxvnni",
    .quantize = ef_qd8_quantize_row__avx2,
    .mr = 4,
    .nr = {4, 2, 1, 1},
    .q4 = {ef_qd8_f32_qb4w_gemm_ukernel_1x4c32__avxvnni, ef_qd8_f32_qb4w_gemm_ukernel_2x2c32__avxvnni,
           ef_qd8_f32_qb4w_gemm_ukernel_3x1c32__avxvnni, ef_qd8_f32_qb4w_gemm_ukernel_4x1c32__avxvnni},
    .q2 = {ef_qd8_f32_qb2w_gemm_ukernel_1x4c32__avxvnni, ef_qd8_f32_qb2w_gemm_ukernel_2x2c32__avxvnni,
           ef_qd8_f32_qb2w_gemm_ukernel_3x1c32__avxvnni, ef_qd8_f32_qb2w_gemm_ukernel_4x1c32__avxvnni},
};
#endif /* EF_ARCH_X86 */
