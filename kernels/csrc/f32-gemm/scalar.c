/* Portable f32-gemm kernels, dense and 16 x 4 block-sparse: reference and fallback. */
#include "f32-gemm.h"

/* Segments of consecutive K steps (f32-gemm.h): nseg of seglen steps, segment s at column
 * kofs[s] (0 when kofs is NULL), weights w[step][16] one segment after the other. */
static void f32_tile_scalar(size_t mr, size_t nc, size_t nseg, size_t seglen, const uint32_t* kofs, const float* x,
                            size_t x_stride, const float* w, const float* bias, float* c, size_t c_stride, float lo,
                            float hi) {
  for (size_t r = 0; r < mr; r++)
    for (size_t j = 0; j < nc; j++) {
      float acc = 0.0f;
      for (size_t s = 0; s < nseg; s++) {
        const float* xs = x + r * x_stride + (kofs ? kofs[s] : 0);
        const float* ws = w + s * seglen * EF_F32_NR;
        for (size_t kk = 0; kk < seglen; kk++) acc += xs[kk] * ws[kk * EF_F32_NR + j];
      }
      c[r * c_stride + j] = ef_clamp(acc + bias[j], lo, hi);
    }
}

static void ef_f32_gemm_minmax_ukernel_4x16__scalar(size_t mr, size_t nc, size_t k, const float* x, size_t x_stride,
                                                    const float* block, float* c, size_t c_stride, float lo, float hi) {
  f32_tile_scalar(mr, nc, 1, k, NULL, x, x_stride, block + EF_F32_NR, block, c, c_stride, lo, hi);
}

static void ef_f32_bsr_minmax_ukernel_4x16__scalar(size_t mr, size_t nc, size_t nb, const uint32_t* kofs,
                                                   const float* x, size_t x_stride, const float* w, const float* bias,
                                                   float* c, size_t c_stride, float lo, float hi) {
  f32_tile_scalar(mr, nc, nb, EF_F32_BSR_KB, kofs, x, x_stride, w, bias, c, c_stride, lo, hi);
}

#define K ef_f32_gemm_minmax_ukernel_4x16__scalar
#define B ef_f32_bsr_minmax_ukernel_4x16__scalar
const ef_f32_gemm_config ef_f32_gemm_config_scalar = {.isa = "scalar", .mr = 4, .ukernel = {K, K, K, K}, .bsr = {B, B, B, B}};
