/* NEON qb-gemm kernels: a 32-weight chunk is unpacked to two uint8x16 (4-bit: mask and
 * shift; 2-bit: four shifts of the same 8 bytes), multiplied with the int8 activations by
 * vmull_s8 (exact: |15 * 127| fits int16) and pairwise-accumulated into int32 (vpadalq). */
#include "qb-gemm.h"

#if EF_ARCH_ARM64
#include <arm_neon.h>

EF_INLINE int32x4_t dot32(int32x4_t acc, int8x16_t q_lo, int8x16_t q_hi, const int8_t* x) {
  const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
  acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(q_lo), vget_low_s8(x0)));
  acc = vpadalq_s16(acc, vmull_s8(vget_high_s8(q_lo), vget_high_s8(x0)));
  acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(q_hi), vget_low_s8(x1)));
  acc = vpadalq_s16(acc, vmull_s8(vget_high_s8(q_hi), vget_high_s8(x1)));
  return acc;
}

EF_INLINE void qb_tile(const int BITS, const size_t MR, size_t groups, size_t group, const int8_t* xq, size_t x_stride,
                       const float* xsum, const float* sx, const uint8_t* row, float bias, float* c, size_t c_stride) {
  const size_t block_bytes = EF_QB_BLOCK_BYTES(BITS, group);
  const size_t chunks = group / EF_QB_CHUNK;
  float32x4_t acc[EF_QB_MR_MAX];
  float acc_m[EF_QB_MR_MAX];
  for (size_t r = 0; r < MR; r++) { acc[r] = vdupq_n_f32(0.0f); acc_m[r] = 0.0f; }
  for (size_t g = 0; g < groups; g++) {
    const uint8_t* block = row + g * block_bytes;
    float d, mm;
    d = (float)((const __fp16*)block)[0]; /* hardware conversion, exact */
    mm = (float)((const __fp16*)block)[1];
    const uint8_t* qs = block + EF_QB_HEADER_BYTES;
    int32x4_t isum[EF_QB_MR_MAX];
    for (size_t r = 0; r < MR; r++) isum[r] = vdupq_n_s32(0);
    for (size_t ch = 0; ch < chunks; ch++) {
      int8x16_t q_lo, q_hi; /* weights 0..15 and 16..31 of the chunk */
      if (BITS == 4) {
        const uint8x16_t v = vld1q_u8(qs + ch * 16);
        q_lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
        q_hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
      } else {
        const uint8x8_t v = vld1_u8(qs + ch * 8), m3 = vdup_n_u8(3);
        q_lo = vreinterpretq_s8_u8(vcombine_u8(vand_u8(v, m3), vand_u8(vshr_n_u8(v, 2), m3)));
        q_hi = vreinterpretq_s8_u8(vcombine_u8(vand_u8(vshr_n_u8(v, 4), m3), vshr_n_u8(v, 6)));
      }
      const size_t k0 = g * group + ch * EF_QB_CHUNK;
      for (size_t r = 0; r < MR; r++) isum[r] = dot32(isum[r], q_lo, q_hi, xq + r * x_stride + k0);
    }
    for (size_t r = 0; r < MR; r++) {
      acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(isum[r]), d);
      acc_m[r] += mm * xsum[r * groups + g];
    }
  }
  for (size_t r = 0; r < MR; r++) c[r * c_stride] = (vaddvq_f32(acc[r]) + acc_m[r]) * sx[r] + bias;
}

#define DEFINE_KERNEL(BITS, MR)                                                                                 \
  static void ef_qd8_f32_qb##BITS##w_gemm_ukernel_##MR##x1c32__neon(                                           \
      size_t mr, size_t nc, size_t groups, size_t group, const int8_t* xq, size_t x_stride, const float* xsum, \
      const float* sx, const uint8_t* rows, size_t row_bytes, const float* bias, float* c, size_t c_stride) {    \
    for (size_t j = 0; j < nc; j++)                                                                             \
      qb_tile(BITS, MR, groups, group, xq, x_stride, xsum, sx, rows + j * row_bytes, bias[j], c + j, c_stride);  \
  }
DEFINE_KERNEL(4, 1)
DEFINE_KERNEL(4, 2)
DEFINE_KERNEL(4, 3)
DEFINE_KERNEL(4, 4)
DEFINE_KERNEL(2, 1)
DEFINE_KERNEL(2, 2)
DEFINE_KERNEL(2, 3)
DEFINE_KERNEL(2, 4)

const ef_qb_gemm_config ef_qb_gemm_config_neon = {
    .isa = "neon",
    .mr = 4,
    .nr = {1, 1, 1, 1},
    .q4 = {ef_qd8_f32_qb4w_gemm_ukernel_1x1c32__neon, ef_qd8_f32_qb4w_gemm_ukernel_2x1c32__neon,
           ef_qd8_f32_qb4w_gemm_ukernel_3x1c32__neon, ef_qd8_f32_qb4w_gemm_ukernel_4x1c32__neon},
    .q2 = {ef_qd8_f32_qb2w_gemm_ukernel_1x1c32__neon, ef_qd8_f32_qb2w_gemm_ukernel_2x1c32__neon,
           ef_qd8_f32_qb2w_gemm_ukernel_3x1c32__neon, ef_qd8_f32_qb2w_gemm_ukernel_4x1c32__neon},
};
#endif /* EF_ARCH_ARM64 */
