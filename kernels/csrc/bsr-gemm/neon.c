/* NEON bsr-gemm kernels (aarch64 baseline, no dot-product extension needed: isa.c has no
 * dotprod detection, so SDOT would fault on the cores without it).
 *
 * A 16 x 4 block holds channel j's weights k..k+3 in bytes 4j..4j+3, so one vld4q_s8
 * de-interleaves it into four vectors, one per K, each holding the 16 channels in order.
 * Each is widened to int16 and multiplied by the row's activation at that K with
 * vmlal_lane_s16 (int16 x int16 -> int32 multiply-accumulate, wrapping mod 2^32 like the
 * scalar sum): exact for every int8 input, and the four int32x4 accumulators per row are
 * already the 16 channels in order, so nothing is reduced at the end. The activation row
 * is the int16 one the scalar kernel reads (config.a_u8 = 0); a block's 4 K values are one
 * 64-bit load.
 *
 * Register tile at MR = 4: 16 accumulators + 8 widened weight vectors + 4 activation
 * vectors = 28 of the 32 vector registers.
 *
 * The epilogue is the NEON qs8-gemm kernel's (qs8-gemm/neon-epilogue.h): the scalar
 * definition element by element, bit-identical to the reference by construction. */
#include "bsr-gemm/bsr-gemm.h"

#if EF_ARCH_ARM64
#include <arm_neon.h>

#include "qs8-gemm/neon-epilogue.h"

#define MR_NEON 4

/* acc[0..3] += the 16 channels' weights at one K (w8, int8) times activations a (lane L). */
#define MLA_K(acc, w8, av, L)                                                  \
  do {                                                                         \
    const int16x8_t lo_ = vmovl_s8(vget_low_s8(w8)), hi_ = vmovl_high_s8(w8); \
    (acc)[0] = vmlal_lane_s16((acc)[0], vget_low_s16(lo_), av, L);            \
    (acc)[1] = vmlal_high_lane_s16((acc)[1], lo_, av, L);                     \
    (acc)[2] = vmlal_lane_s16((acc)[2], vget_low_s16(hi_), av, L);            \
    (acc)[3] = vmlal_high_lane_s16((acc)[3], hi_, av, L);                     \
  } while (0)

EF_INLINE void bsr_tile(const size_t MR, size_t nc, size_t nb, const uint32_t* kofs, const int8_t* w, const int16_t* a,
                        size_t a_stride, const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum,
                        const uint8_t* header, void* c, size_t c_stride, const ef_qs8_gemm_params* p) {
  int32x4_t acc[MR_NEON][4];
  for (size_t r = 0; r < MR; r++)
    for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_s32(0);

  for (size_t b = 0; b < nb; b++, w += EF_BSR_BLOCK_BYTES) {
    const size_t k0 = kofs[b];
    const int8x16x4_t wk = vld4q_s8(w); /* val[t]: channels 0..15 at K k0 + t */
    for (size_t r = 0; r < MR; r++) {
      const int16x4_t av = vld1_s16(a + r * a_stride + k0);
      MLA_K(acc[r], wk.val[0], av, 0);
      MLA_K(acc[r], wk.val[1], av, 1);
      MLA_K(acc[r], wk.val[2], av, 2);
      MLA_K(acc[r], wk.val[3], av, 3);
    }
  }

  for (size_t r = 0; r < MR; r++) {
    void* row = p->out_int8 ? (void*)((int8_t*)c + r * c_stride) : (void*)((float*)c + r * c_stride);
    ef_qs8_store_row16__neon(acc[r], header, nc, a_zp[r], a_scale[r], a_rowsum[r], row, p);
  }
}

#define DEFINE_KERNEL(MR)                                                                                          \
  static void ef_qs8_qc8w_bsrgemm_minmax_ukernel_##MR##x16c4__neon(                                               \
      size_t mr, size_t nc, size_t nb, const uint32_t* kofs, const int8_t* w, const void* a, size_t a_stride,      \
      const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum, const uint8_t* header, void* c,          \
      size_t c_stride, const ef_qs8_gemm_params* p) {                                                               \
    bsr_tile(MR, nc, nb, kofs, w, (const int16_t*)a, a_stride, a_zp, a_scale, a_rowsum, header, c, c_stride, p); \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)
DEFINE_KERNEL(3)
DEFINE_KERNEL(4)

const ef_bsr_config ef_bsr_config_neon = {
    .isa = "neon",
    .arch_flags = EF_ARCH_ARM_NEON,
    .mr = MR_NEON,
    .a_u8 = 0,
    .ukernel = {ef_qs8_qc8w_bsrgemm_minmax_ukernel_1x16c4__neon, ef_qs8_qc8w_bsrgemm_minmax_ukernel_2x16c4__neon,
                ef_qs8_qc8w_bsrgemm_minmax_ukernel_3x16c4__neon, ef_qs8_qc8w_bsrgemm_minmax_ukernel_4x16c4__neon},
};
#endif /* EF_ARCH_ARM64 */
