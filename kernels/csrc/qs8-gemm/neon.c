/* NEON qs8-gemm kernels (aarch64 baseline, no dot-product extension needed).
 *
 * vld2q_s8 splits one packed K pair into the 16 columns' k and k+1 weights; each is widened
 * to int16 and multiplied by the row's activation with vmlal_n_s16 (int16 x int16 -> int32
 * multiply-accumulate), exact for every int8 input. Four int32x4 accumulators per row cover
 * the 16 columns. The epilogue (neon-epilogue.h, shared with bsr-gemm) runs the scalar
 * definition element by element, so it is bit-identical to the reference by construction. */
#include "qs8-gemm.h"

#if EF_ARCH_ARM64
#include <arm_neon.h>

#include "qs8-gemm/neon-epilogue.h"

EF_INLINE void gemm_tile(const size_t MR, size_t nc, size_t kp, const int16_t* a, size_t a_stride, const int32_t* a_zp,
                         const float* a_scale, const int32_t* a_rowsum, const uint8_t* block, void* c, size_t c_stride,
                         const ef_qs8_gemm_params* p) {
  int32x4_t acc[EF_QS8_MR_MAX][4];
  for (size_t r = 0; r < MR; r++)
    for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_s32(0);

  const int8_t* w = (const int8_t*)(block + EF_QS8_BLOCK_HEADER_BYTES);
  for (size_t kk = 0; kk < kp; kk += 2) {
    const int8x16x2_t pair = vld2q_s8(w); /* val[0]: k for columns 0..15, val[1]: k+1 */
    w += 2 * EF_QS8_NR;
    const int16x8_t k0_lo = vmovl_s8(vget_low_s8(pair.val[0])), k0_hi = vmovl_s8(vget_high_s8(pair.val[0]));
    const int16x8_t k1_lo = vmovl_s8(vget_low_s8(pair.val[1])), k1_hi = vmovl_s8(vget_high_s8(pair.val[1]));
    for (size_t r = 0; r < MR; r++) {
      const int16_t a0 = a[r * a_stride + kk], a1 = a[r * a_stride + kk + 1];
      acc[r][0] = vmlal_n_s16(vmlal_n_s16(acc[r][0], vget_low_s16(k0_lo), a0), vget_low_s16(k1_lo), a1);
      acc[r][1] = vmlal_n_s16(vmlal_n_s16(acc[r][1], vget_high_s16(k0_lo), a0), vget_high_s16(k1_lo), a1);
      acc[r][2] = vmlal_n_s16(vmlal_n_s16(acc[r][2], vget_low_s16(k0_hi), a0), vget_low_s16(k1_hi), a1);
      acc[r][3] = vmlal_n_s16(vmlal_n_s16(acc[r][3], vget_high_s16(k0_hi), a0), vget_high_s16(k1_hi), a1);
    }
  }

  for (size_t r = 0; r < MR; r++) {
    void* row = p->out_int8 ? (void*)((int8_t*)c + r * c_stride) : (void*)((float*)c + r * c_stride);
    ef_qs8_store_row16__neon(acc[r], block, nc, a_zp[r], a_scale[r], a_rowsum[r], row, p);
  }
}

#define DEFINE_KERNEL(MR)                                                                                       \
  static void ef_qs8_qc8w_gemm_minmax_ukernel_##MR##x16c2__neon(                                                \
      size_t mr, size_t nc, size_t kp, const void* a_, size_t a_stride, const int32_t* a_zp,                \
      const float* a_scale, const int32_t* a_rowsum, const uint8_t* block, void* c, size_t c_stride,          \
      const ef_qs8_gemm_params* p) {                                                                            \
    gemm_tile(MR, nc, kp, (const int16_t*)a_, a_stride, a_zp, a_scale, a_rowsum, block, c, c_stride, p);       \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)
DEFINE_KERNEL(3)
DEFINE_KERNEL(4)

const ef_qs8_gemm_config ef_qs8_gemm_config_neon = {
    .isa = "neon",
    .arch_flags = EF_ARCH_ARM_NEON,
    .mr = 4,
    .ukernel = {ef_qs8_qc8w_gemm_minmax_ukernel_1x16c2__neon, ef_qs8_qc8w_gemm_minmax_ukernel_2x16c2__neon,
                ef_qs8_qc8w_gemm_minmax_ukernel_3x16c2__neon, ef_qs8_qc8w_gemm_minmax_ukernel_4x16c2__neon},
};
#endif /* EF_ARCH_ARM64 */
