/* NEON f32-gemm kernels: MR x 16 tiles, four float32x4 accumulators per row. */
#include "f32-gemm.h"

#if EF_ARCH_ARM64
#include <arm_neon.h>

EF_INLINE void f32_tile(const size_t MR, size_t nc, size_t k, const float* x, size_t x_stride, const float* block,
                        float* c, size_t c_stride, float lo, float hi) {
  float32x4_t acc[EF_F32_MR_MAX][4];
  for (size_t r = 0; r < MR; r++)
    for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_f32(0.0f);
  const float* w = block + EF_F32_NR;
  for (size_t kk = 0; kk < k; kk++) {
    const float32x4_t w0 = vld1q_f32(w), w1 = vld1q_f32(w + 4), w2 = vld1q_f32(w + 8), w3 = vld1q_f32(w + 12);
    w += EF_F32_NR;
    for (size_t r = 0; r < MR; r++) {
      const float xv = x[r * x_stride + kk];
      acc[r][0] = vfmaq_n_f32(acc[r][0], w0, xv);
      acc[r][1] = vfmaq_n_f32(acc[r][1], w1, xv);
      acc[r][2] = vfmaq_n_f32(acc[r][2], w2, xv);
      acc[r][3] = vfmaq_n_f32(acc[r][3], w3, xv);
    }
  }
  for (size_t r = 0; r < MR; r++) {
    float tmp[EF_F32_NR];
    for (int q = 0; q < 4; q++) vst1q_f32(tmp + 4 * q, acc[r][q]);
    for (size_t j = 0; j < nc; j++) c[r * c_stride + j] = ef_clamp(tmp[j] + block[j], lo, hi);
  }
}

#define DEFINE_KERNEL(MR)                                                                                  \
  static void ef_f32_gemm_minmax_ukernel_##MR##x16__neon(size_t mr, size_t nc, size_t k, const float* x,  \
                                                         size_t x_stride, const float* block, float* c,   \
                                                         size_t c_stride, float lo, float hi) {           \
    f32_tile(MR, nc, k, x, x_stride, block, c, c_stride, lo, hi);                                          \
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
};
#endif
