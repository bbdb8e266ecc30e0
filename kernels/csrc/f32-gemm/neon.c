/* NEON f32-gemm kernels, dense and 16 x 4 block-sparse: MR x 16 tiles, four float32x4
 * accumulators per row. */
#include "f32-gemm.h"

#if EF_ARCH_ARM64
#include <arm_neon.h>

/* nseg segments of seglen K steps (f32-gemm.h): dense is one segment at column 0 (kofs NULL),
 * bsr one 4-step segment per block. */
EF_INLINE void f32_tile(const size_t MR, size_t nc, size_t nseg, const size_t seglen, const uint32_t* kofs,
                        const float* x, size_t x_stride, const float* w, const float* bias, float* c, size_t c_stride,
                        float lo, float hi) {
  float32x4_t acc[EF_F32_MR_MAX][4];
  for (size_t r = 0; r < MR; r++)
    for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_f32(0.0f);
  for (size_t s = 0; s < nseg; s++) {
    const float* xs = kofs ? x + kofs[s] : x;
    for (size_t kk = 0; kk < seglen; kk++) {
      const float32x4_t w0 = vld1q_f32(w), w1 = vld1q_f32(w + 4), w2 = vld1q_f32(w + 8), w3 = vld1q_f32(w + 12);
      w += EF_F32_NR;
      for (size_t r = 0; r < MR; r++) {
        const float xv = xs[r * x_stride + kk];
        acc[r][0] = vfmaq_n_f32(acc[r][0], w0, xv);
        acc[r][1] = vfmaq_n_f32(acc[r][1], w1, xv);
        acc[r][2] = vfmaq_n_f32(acc[r][2], w2, xv);
        acc[r][3] = vfmaq_n_f32(acc[r][3], w3, xv);
      }
    }
  }
  for (size_t r = 0; r < MR; r++) {
    float tmp[EF_F32_NR];
    for (int q = 0; q < 4; q++) vst1q_f32(tmp + 4 * q, acc[r][q]);
    for (size_t j = 0; j < nc; j++) c[r * c_stride + j] = ef_clamp(tmp[j] + bias[j], lo, hi);
  }
}

#define DEFINE_KERNEL(MR)                                                                                      \
  static void ef_f32_gemm_minmax_ukernel_##MR##x16__neon(size_t mr, size_t nc, size_t k, const float* x,      \
                                                         size_t x_stride, const float* block, float* c,       \
                                                         size_t c_stride, float lo, float hi) {               \
    f32_tile(MR, nc, 1, k, NULL, x, x_stride, block + EF_F32_NR, block, c, c_stride, lo, hi);                  \
  }                                                                                                            \
  static void ef_f32_bsr_minmax_ukernel_##MR##x16__neon(size_t mr, size_t nc, size_t nb, const uint32_t* kofs, \
                                                        const float* x, size_t x_stride, const float* w,       \
                                                        const float* bias, float* c, size_t c_stride, float lo,\
                                                        float hi) {                                            \
    f32_tile(MR, nc, nb, EF_F32_BSR_KB, kofs, x, x_stride, w, bias, c, c_stride, lo, hi);                      \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)
DEFINE_KERNEL(3)
DEFINE_KERNEL(4)

const ef_f32_gemm_config ef_f32_gemm_config_neon = {
    .isa = "neon",
    .mr = 4,
    .ukernel = {ef_f32_gemm_minmax_ukernel_1x16__neon, ef_f32_gemm_minmax_ukernel_2x16__neon,
                ef_f32_gemm_minmax_ukernel_3x16__neon, ef_f32_gemm_minmax_ukernel_4x16__neon},
    .bsr = {ef_f32_bsr_minmax_ukernel_1x16__neon, ef_f32_bsr_minmax_ukernel_2x16__neon,
            ef_f32_bsr_minmax_ukernel_3x16__neon, ef_f32_bsr_minmax_ukernel_4x16__neon},
};
#endif
